"""The live dashboard: a page, its assets and its WebSocket, served before the app on one path.

Under ``WS_DASHBOARD_PATH`` (default ``/asok/green/``) the one-port server
answers, before the app sees the request:

- ``/asok/green/``: the page; ``dashboard.js`` and ``dashboard.css``: its assets
  (shipped in the package, no CDN, served to anyone: they hold no data);
- ``/asok/green/live``: a WebSocket that receives a JSON snapshot
  (asok_green.ops.overview) every second.

Only an Asok admin (the logged-in user's ``is_admin``, from the session cookie)
or a holder of ``WS_DASHBOARD_TOKEN`` (``Authorization: Bearer ...`` or
``?token=...``) gets the page and its socket; anyone else gets 403. ``WS_DASHBOARD=0`` turns it
off: the app then answers that path as any other. Each setting is read from
the app's config, then the environment.

Snapshots are built by one publisher greenlet that runs only while at least one
dashboard is open: one snapshot per second, encoded once, offered to every
watcher. A watcher that cannot keep up skips snapshots; it never holds the
others back.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import pathlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import gevent
from gevent.event import Event

from ..protocol.frames import (
    CLOSE_NORMAL,
    OP_CLOSE,
    OP_PONG,
    OP_TEXT,
    Close,
    MessageReader,
    Ping,
    ProtocolError,
    encode_close,
    encode_frame,
)
from ..protocol.handshake import check_upgrade, is_upgrade_request, response_headers
from .overview import REFUSALS, build_snapshot

logger = logging.getLogger("asok_green.dashboard")

ASSETS = pathlib.Path(__file__).resolve().parent / "dashboard_assets"
DEFAULT_PATH = "/asok/green/"
#: Seconds between two snapshots.
INTERVAL = 1.0
#: Seconds a watcher's socket may take to accept one snapshot before it is dropped.
SEND_TIMEOUT = 10.0

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
_FILES = {"": "index.html", "dashboard.js": "dashboard.js", "dashboard.css": "dashboard.css"}
_OFF = frozenset({"0", "false", "no", "off"})
_SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Whether the dashboard is served, where, and the token that opens it (None: admins only)."""

    enabled: bool = True
    path: str = DEFAULT_PATH
    token: str | None = None


def resolve_settings(config: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """``WS_DASHBOARD``, ``WS_DASHBOARD_PATH`` and ``WS_DASHBOARD_TOKEN``: the app's config, then the environment."""
    environ = os.environ if environ is None else environ
    config = config or {}

    def setting(key: str) -> Any:
        value = config.get(key)
        return environ.get(key) if value is None else value

    enabled = setting("WS_DASHBOARD")
    path = str(setting("WS_DASHBOARD_PATH") or DEFAULT_PATH)
    path = "/" + path.strip("/") + "/" if path.strip("/") else DEFAULT_PATH
    token = setting("WS_DASHBOARD_TOKEN")
    return Settings(
        enabled=enabled is None or str(enabled).strip().lower() not in _OFF,
        path=path,
        token=str(token) if token else None,
    )


_UNSET = object()
_last_settings: tuple[Any, Settings] = (_UNSET, Settings())


def _settings(hub: Any) -> Settings:
    """:func:`resolve_settings` of the hub's app, the environment read only when the config changes.

    Every request asks (an upgrade too, before its route): reading three config
    keys is cheap, the environment is not.
    """
    global _last_settings
    config = getattr(hub.app, "config", None)
    key = None
    if config is not None:
        get = config.get
        key = (id(config), get("WS_DASHBOARD"), get("WS_DASHBOARD_PATH"), get("WS_DASHBOARD_TOKEN"))
    cached_key, settings = _last_settings
    if key != cached_key:
        settings = resolve_settings(config)
        _last_settings = (key, settings)
    return settings


def serve(handler: Any, hubs: Iterable[Any]) -> bool:
    """Answer the request of pywsgi ``handler`` if it is for the dashboard; False to let the app have it."""
    hubs = list(hubs)
    if not hubs:
        return False
    env = _variables(handler)
    path = env.get("PATH_INFO") or ""
    settings = _settings(hubs[0])
    if not settings.enabled or not (path.startswith(settings.path) or path == settings.path[:-1]):
        return False
    hub = hubs[0]
    _hide_token(handler)
    if path == settings.path[:-1]:
        # Relative asset links need the trailing slash.
        query = env.get("QUERY_STRING")
        location = settings.path + ("?" + query if query else "")
        handler.start_response("301 Moved Permanently", [("Location", location), ("Content-Length", "0")])
        handler.write(b"")
        return True
    rest = path[len(settings.path) :]
    if rest == "live" and is_upgrade_request(env):
        _serve_live(handler, hub, settings)
        return True
    name = _FILES.get(rest)
    if name is None or env.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        _respond(handler, 404, "text/plain; charset=utf-8", b"not found\n")
        return True
    # The script and style sheet hold no data (they ship in the package); the page and its socket do.
    if name == "index.html" and not _allowed(env, hub, settings):
        _respond(handler, 403, "text/plain; charset=utf-8", b"forbidden: the dashboard is for admins\n")
        return True
    file = ASSETS / name
    extra = (("Content-Security-Policy", _PAGE_POLICY),) if name.endswith(".html") else ()
    _respond(handler, 200, _TYPES[file.suffix], file.read_bytes(), extra)
    return True


def _variables(handler: Any) -> Mapping[str, Any]:
    """The request's CGI variables: asok_green's handler has them without building a WSGI environ."""
    variables = getattr(handler, "request_variables", None)
    return variables if variables is not None else handler.environ


def _respond(handler: Any, status: int, content_type: str, body: bytes, extra: Iterable = ()) -> None:
    phrase = {200: "OK", 403: "Forbidden", 404: "Not Found"}[status]
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *_SECURITY_HEADERS, *extra]
    handler.start_response(f"{status} {phrase}", headers)
    if _variables(handler).get("REQUEST_METHOD") != "HEAD":
        handler.write(body)


def presented_token(environ: Mapping[str, Any]) -> str | None:
    """The token a request carries: ``Authorization: Bearer <token>``, else ``?token=<token>``."""
    scheme, _, value = (environ.get("HTTP_AUTHORIZATION") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = parse_qs(environ.get("QUERY_STRING") or "").get("token")
    return values[0] if values else None


def _holds_token(environ: Mapping[str, Any], settings: Settings) -> bool:
    token = presented_token(environ)
    return bool(settings.token) and token is not None and hmac.compare_digest(token.encode(), settings.token.encode())


def _is_admin(environ: Mapping[str, Any], hub: Any) -> bool:
    """True when the request's Asok session cookie is a logged-in user with ``is_admin``."""
    cookie = environ.get("HTTP_COOKIE")
    if not cookie:
        return False
    try:
        user = hub.auth.resolve(cookie, timeout=hub.limits.handshake_timeout).user
    except Exception:
        logger.info("dashboard: could not resolve the session cookie", exc_info=True)
        return False
    finally:
        hub.after_handler()
    return bool(getattr(user, "is_admin", False))


def _allowed(environ: Mapping[str, Any], hub: Any, settings: Settings) -> bool:
    """True for a holder of the token or a logged-in Asok admin."""
    return _holds_token(environ, settings) or _is_admin(environ, hub)


def _hide_token(handler: Any) -> None:
    """Keep a ``?token=`` out of the access log line (pywsgi logs the request line)."""
    line = getattr(handler, "requestline", None)
    if line and "token=" in line:
        head, _, rest = line.partition("token=")
        value = rest.split("&", 1)[0].split(" ", 1)[0]
        handler.requestline = head + "token=***" + rest[len(value) :]


# -- the live socket ------------------------------------------------------------------


class Watcher:
    """One open dashboard socket: the latest snapshot waiting for it, if any."""

    def __init__(self) -> None:
        """A watcher with nothing to send yet."""
        self.latest: bytes | None = None
        self.pong: bytes | None = None
        self.ready = Event()
        self.open = True

    def offer(self, frame: bytes) -> None:
        """Make ``frame`` the next thing to send, replacing one not sent yet."""
        self.latest = frame
        self.ready.set()

    def answer_ping(self, payload: bytes) -> None:
        """Queue the pong for a ping: the one greenlet that writes sends it, so frames never interleave."""
        self.pong = encode_frame(OP_PONG, payload)
        self.ready.set()

    def end(self) -> None:
        """Stop serving this watcher."""
        self.open = False
        self.ready.set()


class Publisher:
    """Builds one snapshot a second while at least one watcher is subscribed, and offers it to each."""

    def __init__(self, hub: Any, interval: float = INTERVAL) -> None:
        """A publisher of ``hub``'s snapshots; idle until someone subscribes."""
        self.hub = hub
        self.interval = interval
        self.watchers: dict[Watcher, None] = {}
        self._loop: gevent.Greenlet | None = None
        self._previous: dict | None = None

    def subscribe(self, watcher: Watcher) -> None:
        """Add ``watcher``; it gets the current snapshot at once, then one each interval."""
        self.watchers[watcher] = None
        watcher.offer(self._frame())
        if self._loop is None:
            self._loop = gevent.spawn(self._run)

    def unsubscribe(self, watcher: Watcher) -> None:
        """Remove ``watcher``; the publisher stops when none is left."""
        self.watchers.pop(watcher, None)

    def _frame(self) -> bytes:
        snapshot = build_snapshot(self.hub, now=time.monotonic(), previous=self._previous, refusals=REFUSALS)
        self._previous = snapshot
        return encode_frame(OP_TEXT, json.dumps(snapshot, default=str).encode("utf-8"))

    def _run(self) -> None:
        try:
            while self.watchers:
                gevent.sleep(self.interval)
                if not self.watchers:
                    break
                try:
                    frame = self._frame()
                except Exception:
                    logger.exception("dashboard: building a snapshot failed")
                    continue
                for watcher in tuple(self.watchers):
                    watcher.offer(frame)
        finally:
            self._loop = None
            self._previous = None


_PUBLISHERS: dict[int, Publisher] = {}


def publisher_for(hub: Any) -> Publisher:
    """The publisher of ``hub``'s snapshots (one per hub)."""
    found = _PUBLISHERS.get(id(hub))
    if found is None or found.hub is not hub:
        found = _PUBLISHERS[id(hub)] = Publisher(hub)
    return found


def _refuse_live(handler: Any, status: int, reason: str) -> None:
    body = (reason + "\n").encode()
    handler.close_connection = True
    phrase = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 426: "Upgrade Required"}.get(
        status, "Bad Request"
    )
    handler.start_response(
        f"{status} {phrase}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), ("Connection", "close")],
    )
    handler.write(body)


def _serve_live(handler: Any, hub: Any, settings: Settings) -> None:
    """Upgrade the request, then push snapshots until the client closes or stops reading."""
    env = _variables(handler)
    refusal = check_upgrade(env)
    if refusal is not None:
        _refuse_live(handler, refusal.status, refusal.reason)
        return
    if not _holds_token(env, settings):
        # A cookie goes with any page's request: another site's page must not read the snapshots.
        if not hub.origins.allows(env.get("HTTP_ORIGIN"), env.get("HTTP_HOST")):
            _refuse_live(handler, 403, "origin not allowed")
            return
        if not _is_admin(env, hub):
            _refuse_live(handler, 403, "forbidden: the dashboard is for admins")
            return
    handler.environ["wsgi.websocket"] = True  # gevent-websocket's start_response then sends a bare 101
    handler.start_response("101 Switching Protocols", response_headers(env, None))
    handler.write(b"")
    handler.close_connection = True
    sock = handler.socket
    sock.settimeout(SEND_TIMEOUT)
    watcher = Watcher()
    reader = gevent.spawn(_read_until_close, sock, watcher)
    publisher = publisher_for(hub)
    publisher.subscribe(watcher)
    try:
        while watcher.open:
            watcher.ready.wait()
            watcher.ready.clear()
            pong, watcher.pong = watcher.pong, None
            if pong is not None:
                sock.sendall(pong)
            frame, watcher.latest = watcher.latest, None
            if frame is not None and watcher.open:
                sock.sendall(frame)
        sock.sendall(encode_frame(OP_CLOSE, encode_close(CLOSE_NORMAL)))
    except OSError:  # a timeout too: a watcher that does not read is dropped
        pass
    finally:
        publisher.unsubscribe(watcher)
        reader.kill(block=False)


def _read_until_close(sock: Any, watcher: Watcher) -> None:
    """Read the client's frames: answer pings, end the watcher at its close frame or when it goes."""
    reader = MessageReader(max_message_size=4096)
    try:
        while watcher.open:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            if not data:
                break
            for event in reader.feed(data):
                if type(event) is Ping:
                    watcher.answer_ping(event.payload)
                elif type(event) is Close:
                    return
    except (OSError, ProtocolError):
        pass
    finally:
        watcher.end()
