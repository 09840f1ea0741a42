"""Revocation: logged-in connections end when their session does, and only then.

A connection opened with a valid login remembers the session id its login is
bound to. When that session is logged out or revoked, the connection is closed
with 1008: at once when the logout happens in this process, and otherwise at
the next periodic re-check (``session_check_interval``, default 30 s).

A store that cannot answer is not a logout. A re-check whose lookup fails
(:data:`SessionState.UNKNOWN`: Redis down, an unreadable session directory)
keeps every socket open and stops that pass; the next pass asks again. The
outage is logged once by the session lookups, and the re-check job itself
survives any error: it logs the first one with its traceback and runs again at
the next interval.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent

from ..core.outage import Outage
from ..core.sessions import SessionState
from ..protocol.frames import CLOSE_POLICY

if TYPE_CHECKING:
    from .connection import Connection

logger = logging.getLogger("asok_green")

REVOKED_REASON = "session ended: logged out or revoked"


def by_session(connections: Iterable[Connection]) -> dict[tuple[str, Any], list[Connection]]:
    """Open logged-in connections grouped by ``(login session id, user id)``."""
    groups: dict[tuple[str, Any], list[Connection]] = defaultdict(list)
    for conn in connections:
        if conn.login_sid and not conn.closed:
            groups[(conn.login_sid, getattr(conn.user, "id", None))].append(conn)
    return groups


def close_all(connections: Iterable[Connection], reason: str = REVOKED_REASON) -> int:
    """Close each still-open connection with 1008; returns how many were closed."""
    closed = 0
    for conn in connections:
        if not conn.closed:
            conn.close(CLOSE_POLICY, reason)
            closed += 1
    return closed


def recheck(connections: Iterable[Connection], state_of: Callable[[str, Any], SessionState]) -> tuple[int, bool]:
    """Close the connections whose session ``state_of`` says has ENDED.

    Returns ``(closed, complete)``. At the first UNKNOWN the store is failing:
    the pass stops there (``complete`` is False) and every connection not yet
    decided stays open until the next pass. ``state_of`` may yield: the
    groups are a snapshot, and a connection that closed meanwhile is skipped.
    """
    closed = 0
    for (sid, user_id), members in by_session(connections).items():
        state = state_of(sid, user_id)
        if state is SessionState.UNKNOWN:
            return closed, False
        if state is SessionState.ENDED:
            closed += close_all(members)
    return closed, True


def run(server: Any) -> None:
    """Re-check the hub ``server``'s logged-in connections each ``session_check_interval`` seconds, for good.

    Counts each pass in ``server.stats``: ``session_rechecks``, and
    ``session_rechecks_unknown`` for those the store could not answer.
    """
    job = Outage("session re-check", logger, "trying again at each interval")
    while True:
        gevent.sleep(server.limits.session_check_interval)
        try:
            closed, complete = recheck(server.connections(), server.auth.session_state)
        except Exception as error:
            job.failed(error, level=logging.ERROR, traceback=True)
            continue
        job.answered()
        server.stats["session_rechecks"] += 1
        if not complete:
            server.stats["session_rechecks_unknown"] += 1
        if closed:
            logger.info("closed %d WebSocket(s) whose session ended", closed)
            server.stats["revoked"] += closed
