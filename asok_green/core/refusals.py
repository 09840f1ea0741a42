"""Requests this process refused, and why: one record the server writes and ops reads.

The server notes each refusal here as it answers it; the metrics endpoint
exports :data:`handshake_refusals` (by the cause labels of
:func:`refusal_label`, as the log lines name them too) and the dashboard shows
:data:`REFUSALS` (by the causes of :func:`refusal_cause`, with the latest
refusals: the cause, the HTTP status, the route pattern the path matched,
never the raw path, which the client chose, and the time).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_REFUSALS", "REFUSALS", "Refusal", "RefusalLog", "handshake_refusals", "refusal_cause", "refusal_label"]

#: How many recent refusals the dashboard's log keeps.
MAX_REFUSALS = 50


def refusal_label(status: int, reason: str) -> str:
    """A refused request's cause in logs and metrics: origin, limit, auth, route, path, headers or protocol.

    A 403 is ``origin`` unless its reason says otherwise (the dashboard's "for admins" is ``auth``).
    """
    if status == 403:
        return "origin" if "origin" in reason else "auth"
    if status == 503:
        return "limit" if "too many" in reason else "auth"
    if status == 404:
        return "path" if "canonical" in reason else "route"
    if status in (408, 414, 431):
        return "headers"
    return "protocol"


#: Requests refused in this process, by :func:`refusal_label`: handshakes, and requests whose head was refused.
handshake_refusals: Counter = Counter()


def refusal_cause(status: int, reason: str) -> str:
    """The cause of a refused handshake as the dashboard shows it: a small, fixed set of words."""
    if status == 403:
        return "origin" if "origin" in reason else "auth"
    if status == 404:
        return "route"
    if status == 503:
        return "capacity" if "too many" in reason else "auth"
    if status == 401:
        return "auth"
    return "handshake"


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused handshake as the dashboard keeps it."""

    at: float
    cause: str
    status: int
    pattern: str | None


class RefusalLog:
    """Refused handshakes of this process: counts by cause, and the latest ``size`` of them."""

    def __init__(self, size: int = MAX_REFUSALS) -> None:
        """An empty log keeping at most ``size`` recent refusals."""
        self.counts: Counter = Counter()
        self.recent: deque[Refusal] = deque(maxlen=size)

    def note(self, status: int, reason: str, pattern: str | None, at: float | None = None) -> None:
        """Count one refusal; ``pattern`` is the route pattern the path matched, if any."""
        cause = refusal_cause(status, reason)
        self.counts[cause] += 1
        self.recent.append(Refusal(time.time() if at is None else at, cause, status, pattern))

    def note_handshake(self, refusal: Any, hubs: Iterable[Any], path: str) -> None:
        """Count a refusal the server answered to an upgrade request for ``path``."""
        pattern = None
        if refusal.status != 404:
            for hub in hubs:
                route, _ = hub.match(path)
                if route is not None:
                    pattern = route.pattern
                    break
        self.note(refusal.status, refusal.reason, pattern)

    def view(self) -> dict:
        """Counts by cause and the recent refusals, newest first, as JSON-able data."""
        return {
            "by_cause": dict(self.counts),
            "recent": [
                {"at": r.at, "cause": r.cause, "status": r.status, "pattern": r.pattern} for r in reversed(self.recent)
            ],
        }


#: The refused handshakes of this process (the server notes each one it answers), for the dashboard.
REFUSALS = RefusalLog()
