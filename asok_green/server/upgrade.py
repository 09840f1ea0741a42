"""The lean upgrade path: a WebSocket handshake decided on its parsed head, answered with one ``sendall``.

A well-formed upgrade request's head is parsed once into a
:class:`~asok_green.protocol.request_head.RequestHead` (by the handler's
``read_request``, no ``email`` parser); here the route, the Origin, the
subprotocol, a connection slot and the session are decided on it, the 101 is
written with one ``sendall``, pywsgi's per-request state is dropped (the
connection outlives it by hours), and the socket goes to a
:class:`~asok_green.server.connection.Connection`. A refusal gets its status
and a plain-text reason, counted in :mod:`asok_green.core.refusals` and logged
at a bounded rate.
"""

from __future__ import annotations

import io
import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.socket
from gevent.pywsgi import format_date_time
from geventwebsocket.handler import WebSocketHandler

from ..core.limits import Limits
from ..core.logs import log_limited
from ..core.proxies import PAGE_KEY, client_address, forwarded_scheme, page_address, proxy_settings, route_path
from ..core.refusals import REFUSALS, handshake_refusals, refusal_label
from ..core.routing import Route, request_path
from ..core.sessions import Credentials, StoreUnavailable
from ..protocol import envelopes
from ..protocol.handshake import (
    SUBPROTOCOL_KEY,
    Refusal,
    accept_subprotocol,
    check_upgrade,
    choose_compression,
    response_headers,
)
from ..protocol.request_head import RequestHead
from .connection import Connection, V1Connection
from .hub import Hub
from .lifecycle import serve_connection

__all__ = ["NO_INPUT", "UpgradeHandler", "encode_response_head", "http_date", "take_buffered"]

logger = logging.getLogger("asok_green")

#: The environ key holding an asok-green.v1 client's resume position (``?asok_since=``).
_SINCE_KEY = "asok_green.since"

DEFAULT_LIMITS = Limits()


def take_buffered(rfile: Any) -> bytes:
    """Bytes the client sent right behind its handshake, already read into ``rfile``'s buffer.

    Only the buffer is read: ``rfile``'s raw stream is made to answer "nothing
    yet", as a non-blocking one does, so no system call asks the kernel for
    more (``rfile`` is closed right after; later bytes are the connection's).
    """
    raw = getattr(rfile, "raw", None)
    if raw is not None:
        raw.readinto = _nothing_yet
    try:
        return rfile.read1(65536) or b""
    except (OSError, ValueError):
        return b""


def _nothing_yet(buffer: Any) -> None:
    return None


def encode_response_head(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    """``HTTP/1.1 <status>``, the header lines and the blank line, as bytes on the wire."""
    lines = [f"HTTP/1.1 {status_line}", *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def http_date(timestamp: float) -> str:
    """``Tue, 01 Dec 2026 05:44:19 GMT``: a Date header's value, as pywsgi writes it."""
    value = format_date_time(timestamp)
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _NoInput:
    """Stands in for pywsgi's request body reader once the connection is upgraded."""

    def _discard(self) -> None:
        """Nothing to discard: an upgrade request has no body."""


#: Stands in for pywsgi's request body reader where a request has no body to read (an upgrade's).
NO_INPUT = _NoInput()
_CLOSED_FILE = io.BytesIO()
_CLOSED_FILE.close()

#: Per-request state pywsgi keeps on its handler that an upgraded connection never reads again.
_REQUEST_STATE = (
    "headers",
    "requestline",
    "command",
    "path",
    "request_version",
    "status",
    "_orig_status",
    "response_headers",
    "result",
    "application",
    "head",
    "framing",
    "_header_lines",
)


class UpgradeHandler(WebSocketHandler):
    """The part of asok_green's pywsgi handler that upgrades a request to a WebSocket.

    :class:`asok_green.server.handler.GreenHandler` builds on it: it reads the
    request and calls :meth:`upgrade` for an upgrade request. The hubs are the
    server's ``hubs`` attribute when it has one (``GreenServer``), otherwise
    every hub (each ``WebSocketServer``) created in the process (so the class
    also works under gunicorn's gevent workers).
    """

    #: The lean path's parsed head of an upgrade request; None for requests pywsgi parses.
    head: RequestHead | None = None

    @property
    def limits(self) -> Limits:
        """The server's limits (handshake time, header size), or the defaults under a server without them."""
        return getattr(self.server, "limits", None) or DEFAULT_LIMITS

    @property
    def app_config(self) -> Any:
        """The WSGI app's ``config`` (Asok's settings), or None."""
        return getattr(getattr(self.server, "application", None), "config", None)

    @property
    def hubs(self) -> Iterable[Hub]:
        """The hubs whose routes this handler serves."""
        return getattr(self.server, "hubs", None) or Hub.instances()

    def _find_route(self, path: str) -> tuple[Hub | None, Route | None, dict]:
        """The first hub with a route for ``path``, the route and its captures; Nones if none has one."""
        for hub in self.hubs:
            route, params = hub.match(path)
            if route is not None:
                return hub, route, params
        return None, None, {}

    def _admit(self, path: str, env: Any) -> tuple[Any, Any, dict, Refusal | None]:
        """``(hub, route, params, None)`` with a slot held for this handshake, or the refusal."""
        refusal = check_upgrade(env)
        if refusal is not None:
            return None, None, {}, refusal
        hub, route, params = self._find_route(path)
        if hub is None:
            return None, None, {}, Refusal(404, f"no WebSocket route matches {path}")
        origin = env.get("HTTP_ORIGIN")
        # A route with a guard makes the Origin check itself, once the session is known.
        if route.guard is None and not hub.origins.allows(origin, env.get("HTTP_HOST"), forwarded_scheme(env)):
            return None, None, {}, Refusal(403, f"origin {origin!r} is not allowed")
        # Named in the 101 answer (response_headers); routes of no subprotocol of their own speak asok-green.v1.
        if accept_subprotocol(env, route.subprotocols or (envelopes.SUBPROTOCOL,)) == envelopes.SUBPROTOCOL:
            try:
                env[_SINCE_KEY] = envelopes.since_from_query(env.get("QUERY_STRING", ""))
            except envelopes.BadSince as exc:
                return None, None, {}, Refusal(400, str(exc))
        # A slot is held from here: the handshake may yield (session lookup) before the
        # connection registers, and every handshake in flight counts toward the limit.
        handshake = gevent.getcurrent()
        if isinstance(handshake, gevent.Greenlet):
            admitted = hub.reserve_slot(handshake)
            if admitted:
                # Given back when this greenlet ends, if the handshake never registers.
                handshake.link(hub.release_slot)
        else:
            admitted = hub.has_room_for_another()
        if not admitted:
            hub.stats["refused_capacity"] += 1
            return None, None, {}, Refusal(503, "too many WebSocket connections", (("Retry-After", "5"),))
        return hub, route, params, None

    def upgrade(self, head: RequestHead) -> None:
        """Answer the upgrade request ``head``: a 101 and a connection served from here on, or a refusal."""
        env = head.variables
        # One spelling per path: a non-canonical one gets 404 (asok_green.core.routing).
        path = request_path(env.get("PATH_INFO") or "/")
        if path is None:
            raw = repr(env.get("PATH_INFO"))
            self._refuse(Refusal(404, f"no WebSocket route matches {raw}: not a canonical path"), raw, env)
            return
        policy, prefix = proxy_settings(self.app_config)
        if policy.enabled and PAGE_KEY not in env:
            _locate_page(head, policy)
        path = route_path(path, prefix)  # behind a proxy's prefix (WS_PATH)
        addr = client_address(self.client_address, env, policy)
        hub, route, params, refusal = self._admit(path, env)
        if refusal is not None:
            self._refuse(refusal, path, env)
            return
        headers = head.fields
        try:
            who = hub.auth.resolve(headers.get("cookie"), timeout=hub.limits.handshake_timeout)
        except StoreUnavailable:
            # Not a guest: the store could not say who this is. The client retries.
            self._refuse(Refusal(503, "session store unavailable, try again", (("Retry-After", "5"),)), path, env)
            return
        except Exception:
            logger.exception("session lookup failed for %s: serving as guest", path)
            who = Credentials()
        finally:
            hub.after_handler()
        if route.guard is not None:
            origin_allowed = hub.origins.allows(env.get("HTTP_ORIGIN"), env.get("HTTP_HOST"), forwarded_scheme(env))
            refusal = route.guard(env, who, origin_allowed)
            if refusal is not None:
                self._refuse(refusal, path, env)
                return
        deflate = choose_compression(env, hub.limits.compression)
        v1, since = env.get(SUBPROTOCOL_KEY) == envelopes.SUBPROTOCOL, env.get(_SINCE_KEY)
        self._send_response("101 Switching Protocols", response_headers(env, deflate))
        leftover = take_buffered(self.rfile)
        if hub.limits.send_buffer > 0:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.limits.send_buffer)
        self._release_request_state()
        sock, own = self._take_socket()
        conn = (V1Connection if v1 else Connection)(
            hub,
            sock,
            addr,
            path,
            headers,
            params,
            who.user,
            who.session,
            leftover,
            login_sid=who.login_sid,
            deflate=deflate,
            own_socket=own,
        )
        if v1:
            conn.since = since
        serve_connection(hub, conn, route)

    def _release_request_state(self) -> None:
        """Drop what pywsgi keeps of the handshake: the connection outlives it by hours.

        After ``run_application`` returns, pywsgi still calls ``wsgi_input._discard()``
        and checks ``rfile.closed``; cheap stand-ins answer those, and a closed
        ``rfile`` plus ``close_connection`` end its request loop.
        """
        rfile = self.rfile
        self.rfile = _CLOSED_FILE
        rfile.close()
        self.wsgi_input = NO_INPUT
        self.close_connection = True
        environ = self.__dict__.get("_environ")
        if environ is None:
            self.__dict__["_environ"] = {}
        else:
            environ.clear()
        for name in _REQUEST_STATE:
            self.__dict__.pop(name, None)

    def _take_socket(self) -> tuple[Any, bool]:
        """The upgraded socket, and whether the connection owns it from now on.

        Under a server that waits for watched connections (``GreenServer``), a
        plain socket is taken from pywsgi (which closes its socket when this
        greenlet ends) and the server is told to leave it open.
        """
        sock = self.socket
        if not getattr(self.server, "watches_connections", False) or type(sock) is not gevent.socket.socket:
            return sock, False
        self.socket = None
        self.server.keep_open(sock)
        return sock, True

    def _send_response(self, status_line: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """Write a whole response at once, noted as pywsgi notes its own for the log.

        On a plain socket one ``send`` on the kernel socket (the client has just
        spoken: its buffer has room), with gevent's ``sendall`` only for a rest;
        a TLS socket always goes through its own ``sendall``, which encrypts.
        """
        data = encode_response_head(status_line, headers) + body
        self.status = status_line.encode("latin-1")
        self._orig_status = status_line
        self.code = int(status_line[:3])
        self.headers_sent = True
        sent = 0
        sock = self.socket
        if type(sock) is gevent.socket.socket:
            try:
                sent = sock._sock.send(data)  # gevent's kernel socket: never waits
            except (BlockingIOError, InterruptedError):
                sent = 0
        if sent < len(data):
            sock.sendall(data[sent:] if sent else data)
        self.response_length = len(data)

    def _refuse(self, refusal: Refusal, path: str, env: Any) -> None:
        """Answer ``refusal`` (status, reason, headers) and close; counted and logged at a bounded rate."""
        REFUSALS.note_handshake(refusal, self.hubs, path)
        status = int(refusal.status_line[:3])
        cause = refusal_label(status, refusal.reason)
        handshake_refusals[cause] += 1
        # A flood of refused handshakes is logged as a few lines and a count, not a line each.
        log_limited(
            logger,
            logging.WARNING,
            f"refused WebSocket {refusal.status_line[:3]}",
            self.limits,
            "refused WebSocket %s from %s: %s (%s)",
            path,
            self.client_address,
            refusal.status_line,
            refusal.reason,
            extra={
                "event": "handshake_refused",
                "status": status,
                "cause": cause,
                "path": path,
                "ip": self.client_address[0] if isinstance(self.client_address, tuple) else self.client_address,
                "origin": env.get("HTTP_ORIGIN"),
            },
        )
        body = (refusal.reason + "\n").encode("utf-8")
        self.close_connection = True
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *refusal.headers,
            ("Date", http_date(time.time())),
        ]
        self._send_response(refusal.status_line, headers, body)
        # An access log reads the answer's headers as pywsgi keeps them (gunicorn's does).
        self.response_headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _locate_page(head: RequestHead, policy: Any) -> None:
    """Where the browser loaded the page from, when a proxy may say so: as ``get_environ`` notes it."""
    page = page_address(head.variables, policy)
    if page is None:
        return
    head.variables.update(page.environ_updates())
    if page.forwarded:
        head.fields["host"] = page.authority
