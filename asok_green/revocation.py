"""Revocation: logged-in connections end when their session does.

A connection opened with a valid login remembers the session id its login is
bound to. When that session is logged out or revoked, the connection is closed
with 1008: at once when the logout happens in this process, and otherwise at
the next periodic re-check (``session_check_interval``, default 30 s).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent

from .frames import CLOSE_POLICY

if TYPE_CHECKING:
    from .connection import Connection
    from .hub import WebSocketServer

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


def recheck(connections: Iterable[Connection], is_live: Callable[[str, Any], bool]) -> int:
    """Close the connections whose session ``is_live`` says is over; returns how many.

    ``is_live`` may yield (a Redis session store): the groups are a snapshot,
    and a connection that closed meanwhile is skipped.
    """
    closed = 0
    for (sid, user_id), members in by_session(connections).items():
        if not is_live(sid, user_id):
            closed += close_all(members)
    return closed


def run(server: WebSocketServer) -> None:
    """Re-check every logged-in connection's session each ``session_check_interval`` seconds."""
    while True:
        gevent.sleep(server.limits.session_check_interval)
        closed = recheck(server.connections(), server.auth.session_is_live)
        if closed:
            logger.info("closed %d WebSocket(s) whose session ended", closed)
            server.stats["revoked"] += closed
