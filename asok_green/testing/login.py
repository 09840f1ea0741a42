"""Logging a test in as a user, without a login page: Asok's two session cookies, made as Asok makes them.

Asok's ``request.login(user)`` (``asok/request/auth.py``) does three things:

* it stores a server-side session holding ``user_id`` (plus ``_created_at`` and
  ``_last_seen``) under a new random session id ``sid``;
* it sets ``asok_session`` = sign(``"<user_id>:<sid>"``): who logged in, bound to
  that session, so a logout or a revoked session disowns the cookie;
* the response then sets ``asok_sid`` = sign(``"<sid>"``), the session itself.

A signature (``asok/core/security.py``) is ``value + "." + hex(HMAC-SHA256(SECRET_KEY,
value))``. :func:`login_cookies` does the same with the app's ``SECRET_KEY`` and
its session store, so a WebSocket handshake (or a page) that sends the cookies
is that user, checked by the same code as a real login's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "sign", "session_data", "login_cookies", "user_id"]

#: The cookie that says who logged in (``"<user_id>:<sid>"``, signed).
LOGIN_COOKIE = "asok_session"
#: The cookie that carries the server-side session id (signed).
SESSION_COOKIE = "asok_sid"


def sign(secret_key: str, value: str) -> str:
    """``value`` signed as Asok signs a cookie: ``value.<hex HMAC-SHA256 of value under secret_key>``."""
    if not secret_key:
        raise ValueError("the app has no SECRET_KEY: Asok cannot sign a session cookie without one")
    digest = hmac.new(secret_key.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"{value}.{digest}"


def session_data(user: Any, now: float | None = None) -> dict[str, Any]:
    """What Asok's login keeps in the server-side session of ``user`` (a user id)."""
    now = time.time() if now is None else now
    return {"user_id": user, "_created_at": now, "_last_seen": now}


def user_id(user: Any) -> Any:
    """The id of ``user``: a model instance (its ``id``), or an id given as such."""
    value = getattr(user, "id", user)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"log in as a user object with an id, or an id; not {user!r}")
    return value


def login_cookies(config: Any, store: Any, user: Any) -> dict[str, str]:
    """Log ``user`` in: store a new session for it in ``store``; the cookies that carry it.

    ``config`` is the app's config (its ``SECRET_KEY`` signs the cookies) and
    ``store`` its session store (Asok's ``SessionStore``: ``save(sid, data)``).
    The result maps ``asok_session`` and ``asok_sid`` to their values.
    """
    if store is None:
        raise RuntimeError("the app has no session store: is it an Asok app?")
    uid = user_id(user)
    secret_key = str(config.get("SECRET_KEY") or "")
    generate = getattr(store, "generate_sid", None)
    sid = generate() if generate is not None else secrets.token_hex(32)
    store.save(sid, session_data(uid))
    return {LOGIN_COOKIE: sign(secret_key, f"{uid}:{sid}"), SESSION_COOKIE: sign(secret_key, sid)}
