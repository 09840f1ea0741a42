"""What a session lookup answers: who a handshake is, whether a session still holds, or that nobody could say.

The bridge (:mod:`asok_green.bridge.auth`) asks Asok's session store and user
model; the server acts on these answers (a guest, a 503 when the store is
down, a 1008 when a session ended) without knowing where they came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Credentials", "SessionState", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The session store or the user database did not answer: the session is neither live nor ended."""


class SessionState(enum.Enum):
    """What a re-check learned about a session."""

    #: The session exists, has not ended, and is the user's.
    LIVE = "live"
    #: Definitely over: missing, logged out, revoked, or another user's.
    ENDED = "ended"
    #: The store could not say; ask again later.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Credentials:
    """Who a handshake is: the user (or None), the session, and the session id the login is bound to."""

    user: Any = None
    session: Any = None
    login_sid: str | None = None
