"""The live dashboard: a page, its assets and its WebSocket, served before the app on one path.

Under ``WS_DASHBOARD_PATH`` (default ``/asok/green/``) the one-port server
answers, before the app sees the request:

- ``/asok/green/``: the page; ``dashboard.js`` and ``dashboard.css``: its assets
  (shipped in the package, no CDN, served to anyone: they hold no data);
- ``/asok/green/live``: a WebSocket that receives a JSON snapshot
  (asok_green.ops.overview) every second. It is a route of the hub
  (:func:`install`), so its sockets live as every other connection does:
  admitted and counted, closed 1008 when their admin logs out, closed with the
  rest when the server stops or restarts.

Only an Asok admin (the logged-in user's ``is_admin``, from the session cookie)
or a holder of ``WS_DASHBOARD_TOKEN`` (``Authorization: Bearer ...`` or
``?token=...``) gets the page and its socket; anyone else gets 403. ``WS_DASHBOARD=0`` turns it
off: the app then answers that path as any other. Each setting is read from
the app's config, then the environment.

Snapshots are built by one publisher greenlet that runs only while at least one
dashboard is open: one snapshot per second, encoded once, handed to every
watcher. A watcher that does not read is closed by its queue's limit, as any
slow client is; it never holds the others back.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import pathlib
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import gevent

from ..core.refusals import REFUSALS
from ..protocol.frames import OP_TEXT, encode_frame
from ..protocol.handshake import Refusal, is_upgrade_request
from .overview import build_snapshot

logger = logging.getLogger("asok_green.dashboard")

ASSETS = pathlib.Path(__file__).resolve().parent / "dashboard_assets"
DEFAULT_PATH = "/asok/green/"
#: Seconds between two snapshots.
INTERVAL = 1.0
#: The subprotocol the dashboard's socket speaks: JSON snapshots from the server, nothing from the client.
SUBPROTOCOL = "asok-green.dashboard"

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
        install(hub, settings)
        return False  # the hub's route: served by the ordinary upgrade path
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


# -- the live socket: a route of the hub, served as any other connection ---------------


def install(hub: Any, settings: Settings) -> str:
    """Make ``<path>live`` a route of ``hub`` (once per path); returns the route's path.

    Its sockets are ordinary connections: admitted, counted, re-checked and
    closed (1008 on their admin's logout, 1001 or 1012 when the server stops
    or restarts) as every other. The route speaks :data:`SUBPROTOCOL`, so its
    connections get no presence frames; what a watcher sends is read and dropped.
    """
    path = settings.path + "live"
    publishers = _PUBLISHERS.setdefault(hub, {})
    if path not in publishers:
        publisher = publishers[path] = Publisher(hub, path)
        hub.on(path, subprotocols=(SUBPROTOCOL,))  # no message handler
        hub.on_connect(path)(publisher.watch)
        hub.routes.route(path).guard = functools.partial(_admit_watcher, hub, path)
    return path


def _admit_watcher(hub: Any, path: str, variables: Mapping[str, Any], who: Any, origin_allowed: bool) -> Any:
    """The route's guard: a token holder, or an Asok admin from an allowed origin; anyone else gets 403."""
    settings = _settings(hub)
    if not settings.enabled or settings.path + "live" != path:
        return Refusal(404, f"no WebSocket route matches {path}")  # the settings moved the dashboard
    if _holds_token(variables, settings):
        return None
    # A cookie goes with any page's request: another site's page must not read the snapshots.
    if not origin_allowed:
        return Refusal(403, f"origin {variables.get('HTTP_ORIGIN')!r} is not allowed")
    if not getattr(who.user, "is_admin", False):
        return Refusal(403, "forbidden: the dashboard is for admins")
    return None


class Publisher:
    """Pushes one snapshot a second to the connections on the dashboard's path, while there are any.

    Each snapshot is built and encoded once and handed to every watcher with
    ``send_frame``: a watcher that does not read is closed by its own queue's
    limit (1008, as any slow client), never waited for.
    """

    def __init__(self, hub: Any, path: str, interval: float = INTERVAL) -> None:
        """A publisher of ``hub``'s snapshots to the connections on ``path``; idle until one connects."""
        self.hub = hub
        self.path = path
        self.interval = interval
        self.running: gevent.Greenlet | None = None
        self._previous: dict | None = None

    def watch(self, conn: Any) -> None:
        """The route's on_connect: the current snapshot at once, then one each interval."""
        conn.send_frame(self._frame())
        if self.running is None:
            self.running = gevent.spawn(self._run)

    def _frame(self) -> bytes:
        snapshot = build_snapshot(
            self.hub, now=time.monotonic(), previous=self._previous, refusals=REFUSALS, watchers=self.path
        )
        self._previous = snapshot
        return encode_frame(OP_TEXT, json.dumps(snapshot, default=str).encode("utf-8"))

    def _run(self) -> None:
        try:
            while self.hub.connections(self.path):
                gevent.sleep(self.interval)
                watchers = self.hub.connections(self.path)
                if not watchers:
                    break
                try:
                    frame = self._frame()
                except Exception:
                    logger.exception("dashboard: building a snapshot failed")
                    continue
                for conn in watchers:
                    conn.send_frame(frame)
        finally:
            self.running = None
            self._previous = None


#: hub -> dashboard path -> its publisher.
_PUBLISHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
