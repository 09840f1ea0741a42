"""Who is on the other end of a WebSocket: the Asok session cookies to a user.

Asok's ``request.login(user)`` sets two signed cookies:

* ``asok_session`` = sign(``"<user_id>:<sid>"``): who logged in, bound to
  the server-side session ``sid`` so that logging out or revoking that
  session also disowns the cookie;
* ``asok_sid`` = sign(``"<sid>"``): the server-side session itself.

A signature is ``value + "." + hex(HMAC-SHA256(SECRET_KEY, value))``.
:class:`SessionAuth` checks both cookies of a handshake against the app's
session store and user model.

A store that fails is not a store that says no. A cookie that is forged,
stale or logged out makes a guest; a session store or user database that
cannot answer (Redis down, a locked SQLite file, an unreadable session
directory) raises :class:`StoreUnavailable` at the handshake (the server
answers 503 with ``Retry-After``, and the browser reconnects) and makes the
periodic re-check :data:`SessionState.UNKNOWN` (the socket stays open). Asok's
file and Redis stores answer "no session" for both cases, so a "no" from them
is confirmed before it is believed (:func:`load_session`).

Lookups that block the thread (the file store, the user model's
``find`` on SQLite) run in asok_green's worker threads
(:func:`asok_green.blocking`); the memory and Redis stores are asked from the
loop, where Redis, through gevent's sockets, yields instead of blocking.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import gevent

from ..core.outage import Outage
from ..core.sessions import Credentials, SessionState, StoreUnavailable
from . import asok_api, asok_framework

__all__ = [
    "Credentials",
    "SessionAuth",
    "SessionState",
    "StoreUnavailable",
    "load_session",
    "parse_cookie_header",
    "user_id_of",
]

logger = logging.getLogger("asok_green.auth")

#: Name of the cookie that says who logged in (``"user_id:sid"``, signed).
LOGIN_COOKIE = "asok_session"
#: Name of the cookie that carries the server-side session id (signed).
SESSION_COOKIE = "asok_sid"
#: Cookie headers longer than this are ignored as a whole.
MAX_COOKIE_HEADER = 8 * 1024

_MAX_ID_LENGTH = 256
_HEX_DIGITS = frozenset(string.hexdigits)
_SHA256_HEX_LENGTH = 64
_SESSION_ENDED = ("_logged_out", "_revoked")


def parse_cookie_header(header: str | bytes | None) -> dict[str, str]:
    """Parse a ``Cookie`` header into a dict; never raises.

    Tolerant like Asok's request parser: ``name=value`` pairs split on ``;``,
    surrounding double quotes dropped, ``%XX`` decoded, the last duplicate
    wins, pairs without ``=`` skipped. Headers over 8 KiB give ``{}``.
    """
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not isinstance(header, str) or len(header) > MAX_COOKIE_HEADER:
        return {}
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        name = name.strip()
        if sep and name:
            cookies[name] = _cookie_value(value.strip())
    return cookies


def _cookie_value(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    return unquote(raw) if "%" in raw else raw


def user_id_of(user: Any) -> int | str | None:
    """Return the ``id`` of a user object, or None for a guest."""
    return getattr(user, "id", None) if user is not None else None


@dataclass(frozen=True)
class _Login:
    """A verified ``asok_session`` cookie: the user id and its live session."""

    user_id: Any
    sid: str | None = None
    data: Mapping[str, Any] | None = None


_GUEST = Credentials()


def _offload(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from ..server.offload import blocking

    return blocking(fn, *args, **kwargs)


class SessionAuth:
    """Resolves the Asok session cookies of a handshake to ``(user, session)``.

    ``app`` is the Asok app (its cookie check, session store and ``config``
    are used, through asok_green.bridge.asok_api); ``auth_model`` names the
    user model in Asok's model registry; ``secret_key`` is only used when the
    app has no cookie check of its own (defaults to
    ``app.config["SECRET_KEY"]``).
    ``offload(fn, *args)`` runs a blocking lookup off the event loop
    (default: :func:`asok_green.blocking`).

    Failures of the store and the user database are logged once per outage
    (a WARNING when lookups start failing, an INFO when they answer again),
    never once per lookup.
    """

    def __init__(
        self,
        app: Any,
        auth_model: str = "User",
        secret_key: str | None = None,
        offload: Callable[..., Any] | None = None,
    ) -> None:
        """Remember the app, the name of its user model and the signing key."""
        self.app = app
        self.auth_model = auth_model
        self.secret_key = secret_key
        self.offload = offload or _offload
        # Asok is in use: offloaded lookups release the ORM's per-thread connections (core.framework).
        asok_framework.install()
        self.outage = Outage(
            "session lookups (session store or user database)",
            logger,
            "logged-in sockets stay open and logged-in handshakes get 503 until they answer",
        )

    def authenticate(self, cookie_header: str | None) -> tuple[Any | None, Any | None]:
        """Return ``(user, session)`` for a handshake's Cookie header; never raises.

        A guest gets ``(None, session)`` or ``(None, None)``; so does anyone
        while the store cannot answer (use :meth:`resolve` to tell). The
        session is the one named by ``asok_sid``, or else the one the login
        cookie is bound to, as an ``asok.session.Session`` with ``sid`` set.
        """
        try:
            credentials = self.resolve(cookie_header)
        except Exception:
            logger.debug("could not resolve the session cookies", exc_info=True)
            return None, None
        return credentials.user, credentials.session

    def resolve(self, cookie_header: str | None, timeout: float | None = None) -> Credentials:
        """Who the cookies are, plus the id of the session the login is bound to.

        Raises :class:`StoreUnavailable` when a login cookie verifies but the
        session store or the user database fails, or does not answer within
        ``timeout`` seconds: the caller should ask the client to come back (the
        server answers 503). Cookies that are missing, forged, stale or logged
        out give a guest; a guest whose own session cannot be loaded is served
        without it.
        """
        if not cookie_header:
            return _GUEST  # no cookie, nothing to look up
        deadline = gevent.Timeout.start_new(timeout) if timeout else None
        try:
            return self._resolve(cookie_header)
        except gevent.Timeout as expired:
            if expired is not deadline:
                raise
            error = StoreUnavailable(f"no answer within {timeout:g}s")
            self.outage.failed(error)
            raise error from None
        finally:
            if deadline is not None:
                deadline.close()

    def session_state(self, session_id: str, user_id: Any) -> SessionState:
        """LIVE if the session exists, has not ended and is ``user_id``'s; ENDED if not; UNKNOWN if the store failed.

        Used to re-check an open connection, e.g. after a logout elsewhere.
        """
        try:
            data = self._load(session_id)
        except StoreUnavailable:
            return SessionState.UNKNOWN
        return SessionState.LIVE if _is_live_for(data, user_id) else SessionState.ENDED

    def session_is_live(self, session_id: str, user_id: Any) -> bool:
        """True only if :meth:`session_state` is LIVE (False when ended or unknown)."""
        return self.session_state(session_id, user_id) is SessionState.LIVE

    def _resolve(self, cookie_header: str | None) -> Credentials:
        cookies = parse_cookie_header(cookie_header)
        login = self._verified_login(cookies.get(LOGIN_COOKIE))
        session = self._session_for(cookies.get(SESSION_COOKIE), login)
        user = self._find_user(login)
        login_sid = login.sid if user is not None and login is not None else None
        return Credentials(user, session, login_sid)

    # --- the login cookie ---

    def _verified_login(self, signed: str | None) -> _Login | None:
        value = self._unsign(signed)
        if value is None:
            return None
        user_part, colon, sid = value.partition(":")
        if not colon:
            return self._bare_login(user_part)
        if not sid or len(sid) > _MAX_ID_LENGTH:
            return None
        data = self._load(sid)
        if not _is_live_for(data, user_part):
            return None
        # The session's own value is canonical (an int for Asok's models).
        return _Login(data["user_id"], sid, data)

    def _bare_login(self, user_part: str) -> _Login | None:
        # Old-style cookie with no session to check: Asok honours it only in
        # DEBUG, since it cannot be logged out or revoked.
        if not self._config().get("DEBUG"):
            return None
        if not (0 < len(user_part) <= _MAX_ID_LENGTH and _is_ascii_digits(user_part)):
            return None
        return _Login(int(user_part))

    def _find_user(self, login: _Login | None) -> Any | None:
        if login is None:
            return None
        model = asok_api.user_model(self.auth_model)
        if model is None:
            return None
        try:
            user = self.offload(asok_api.find_user, model, login.user_id)
        except Exception as error:
            failure = StoreUnavailable(f"user lookup: {type(error).__name__}: {error}")
            self.outage.failed(failure)
            raise failure from error
        self.outage.answered()
        return user

    # --- the session cookie ---

    def _session_for(self, signed_sid: str | None, login: _Login | None) -> Any | None:
        sid = self._unsign(signed_sid)
        data = None
        if sid and login is not None and sid == login.sid:
            data = login.data
        elif sid and len(sid) <= _MAX_ID_LENGTH:
            try:
                data = self._load(sid)
            except StoreUnavailable:
                # Only a guest's own session is missing: serve the guest without it
                # (the outage is logged). Who is logged in is never guessed.
                data = None
        if data is None and login is not None and login.sid:
            sid, data = login.sid, login.data
        return asok_api.new_session(sid, data) if data is not None else None

    # --- access to the app ---

    def _config(self) -> Mapping[str, Any]:
        config = getattr(self.app, "config", None)
        return config if isinstance(config, Mapping) else {}

    def _load(self, sid: str | None) -> Mapping[str, Any] | None:
        """The session's data, None if there is none; StoreUnavailable if the store failed."""
        store = asok_api.session_store(self.app)
        if store is None or not sid:
            return None
        try:
            if _store_blocks(store):
                data = self.offload(load_session, store, sid)
            else:
                data = load_session(store, sid)
        except StoreUnavailable as error:
            self.outage.failed(error)
            raise
        self.outage.answered()
        return data if isinstance(data, Mapping) else None

    def _unsign(self, signed: str | None) -> str | None:
        if not signed or "." not in signed:
            return None
        verify = asok_api.cookie_verifier(self.app)
        if verify is not None:
            try:
                return verify(signed)
            except Exception:
                logger.debug("could not verify a signed cookie", exc_info=True)
                return None
        key = self.secret_key or self._config().get("SECRET_KEY")
        return _verify_signed(signed, key) if key else None


# --- reading Asok's session store, telling "no session" from "no answer" ---


def load_session(store: Any, sid: str) -> Mapping[str, Any] | None:
    """``store.load(sid)``, or None if there is no such session; raises StoreUnavailable if the store failed.

    Asok's stores swallow their own errors: the file store answers None when it
    cannot read the session directory, the Redis store when Redis is down. A
    None from them is confirmed before it is believed: the file must be missing
    (not unreadable), Redis must say the key does not exist. A ValueError from
    the store is a session id it refuses (the file store's "Invalid session
    ID"): no such session.
    """
    try:
        data = asok_api.read_session(store, sid)
    except ValueError:
        return None
    except Exception as error:
        raise StoreUnavailable(f"session store: {type(error).__name__}: {error}") from error
    if data is not None:
        return data
    backend = asok_api.session_backend(store)
    if backend == "file":
        _confirm_no_session_file(store, sid)
    elif backend == "redis":
        return _confirm_no_redis_session(store, sid)
    return None


def _store_blocks(store: Any) -> bool:
    """True for stores whose reads block the thread (Asok's file store)."""
    return asok_api.session_backend(store) == "file"


def _confirm_no_session_file(store: Any, sid: str) -> None:
    try:
        path = asok_api.session_file(store, sid)
    except ValueError:
        return
    try:
        with open(path, "rb") as session_file:
            session_file.read(1)
    except FileNotFoundError:
        return
    except OSError as error:
        raise StoreUnavailable(f"session store: {type(error).__name__}: {error}") from error
    # The file is there and readable: expired or not JSON, which Asok treats as no session.


def _confirm_no_redis_session(store: Any, sid: str) -> Mapping[str, Any] | None:
    try:
        present = asok_api.redis_session_exists(store, sid)
    except Exception as error:
        raise StoreUnavailable(f"session store: {type(error).__name__}: {error}") from error
    # Present after a None: the first read failed and Redis is back; read it again.
    return asok_api.read_session(store, sid) if present else None


def _verify_signed(signed: str, secret_key: str) -> str | None:
    """Return the value of an Asok-signed string, or None if the HMAC is wrong.

    Same format and check as ``asok.core.security``: ``value.hexdigest`` with
    HMAC-SHA256 over ``value``, compared in constant time.
    """
    value, _, signature = signed.rpartition(".")
    if len(signature) != _SHA256_HEX_LENGTH or not _HEX_DIGITS.issuperset(signature):
        return None
    try:
        expected = hmac.new(secret_key.encode(), value.encode(), hashlib.sha256).hexdigest()
    except UnicodeError:
        return None
    return value if hmac.compare_digest(expected, signature) else None


def _is_ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_live_for(data: Mapping[str, Any] | None, user_id: Any) -> bool:
    """True if session ``data`` exists, has not ended, and belongs to ``user_id``."""
    if data is None or any(data.get(flag) for flag in _SESSION_ENDED):
        return False
    stored = data.get("user_id")
    return stored is not None and str(stored) == str(user_id)
