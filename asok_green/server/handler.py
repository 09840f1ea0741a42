"""The one-port server: pages go to the WSGI app, WebSocket upgrades to the hub.

``GreenHandler`` extends gevent-websocket's ``WebSocketHandler`` through pywsgi's
hooks (``read_request``, ``get_environ``, ``run_application``); ``GreenServer`` is
a ``gevent.pywsgi.WSGIServer`` that uses it and knows how to stop gracefully.

Plain HTTP requests take pywsgi's path unchanged. A well-formed WebSocket
upgrade request takes a lean one: its head is parsed once into a
:class:`~asok_green.protocol.request_head.RequestHead` (no ``email`` parser), the
handshake is decided on it, and the 101 is written with one ``sendall``; the
full WSGI environ is built only if something reads ``handler.environ``.

Under ``GreenServer`` the greenlet that accepted a WebSocket ends after its
on_connect handler: the connection takes its socket over and is read from the
socket's watcher (``Connection.watch``). Under other servers (gunicorn's
worker) that greenlet serves the connection for its whole life.
"""

from __future__ import annotations

import email.parser
import functools
import io
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import gevent
import gevent.socket
from gevent.event import Event
from gevent.pywsgi import LoggingLogAdapter, OldMessage, WSGIHandler, WSGIServer, format_date_time
from geventwebsocket.handler import WebSocketHandler

from ..bridge import browser_client
from ..bridge.auth import Credentials, StoreUnavailable
from ..core.limits import Limits, open_files_limit
from ..core.logs import log_limited
from ..core.proxies import (
    PAGE_KEY,
    client_address,
    forwarded_scheme,
    page_address,
    proxy_settings,
    route_path,
)
from ..core.routing import Route, request_path
from ..ops import dashboard, jsonlog, metrics
from ..ops.overview import REFUSALS
from ..protocol import envelopes
from ..protocol.frames import CLOSE_TRY_AGAIN
from ..protocol.handshake import (
    SUBPROTOCOL_KEY,
    Refusal,
    accept_subprotocol,
    check_upgrade,
    choose_compression,
    is_upgrade_request,
    response_headers,
)
from ..protocol.request_head import RequestHead, parse_upgrade_head
from .connection import Connection, V1Connection
from .hub import WebSocketServer

logger = logging.getLogger("asok_green")
access_logger = logging.getLogger("asok_green.access")

#: The environ key holding an asok-green.v1 client's resume position (``?asok_since=``).
_SINCE_KEY = "asok_green.since"


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


def serve_connection(hub: WebSocketServer, conn: Connection, route: Route) -> None:
    """Own ``conn`` from registration to release: on_connect, messages, on_disconnect.

    The connection takes the slot its handshake reserved (in this greenlet); with
    none left it is closed with 1013 (try again later). A connection that can be
    watched is handed to its socket's read watcher after on_connect, and this
    returns at once; otherwise this reads it until it ends. Whatever raises, the
    connection ends: unregistered, its socket released.
    """
    registered = watched = False
    try:
        handshake = gevent.getcurrent()
        registered = hub.register(conn, reservation=handshake)
        if isinstance(handshake, gevent.Greenlet):
            handshake.unlink(hub.release_slot)  # the slot is used (or was never held)
        if not registered:
            logger.warning(
                "closing %s on %s: every connection slot is taken",
                conn.addr,
                conn.path,
                extra=jsonlog.conn_fields(conn, "connection_refused", close_code=CLOSE_TRY_AGAIN, cause="limit"),
            )
            conn.close(CLOSE_TRY_AGAIN, "too many connections", timeout=0)
            return
        if route.on_connect is not None:
            _call_handler(route.on_connect, conn, "connect")
        if conn.can_watch:
            conn.watch(route.on_message, functools.partial(end_connection, hub, conn, route))
            watched = True
        else:
            conn.run(route.on_message)
    finally:
        if not watched:
            if registered:
                end_connection(hub, conn, route)
            else:
                conn.finish(0)


def end_connection(hub: WebSocketServer, conn: Connection, route: Route) -> None:
    """What follows the last read: unregister, on_disconnect, then flush (bounded) and release.

    The socket is released and the slot given back even if any step raises.
    """
    try:
        try:
            hub.unregister(conn)
        finally:
            if route.on_disconnect is not None:
                _call_handler(route.on_disconnect, conn, "disconnect")
    finally:
        conn.finish(hub.limits.flush_timeout)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "closed %s on %s: %s",
                conn.addr,
                conn.path,
                conn.close_code,
                extra=jsonlog.conn_fields(conn, "closed", close_code=conn.close_code, reason=conn.close_reason),
            )


def _call_handler(handler: Any, conn: Connection, what: str) -> None:
    started = time.monotonic()
    try:
        handler(conn)
    except Exception:
        logger.exception(
            "error in %s handler for %s (from %s)",
            what,
            conn.path,
            conn.addr,
            extra=jsonlog.conn_fields(conn, "handler_error", handler=what),
        )
    finally:
        conn.server.handler_times.handled(handler, time.monotonic() - started)
        try:
            conn.server.after_handler()
        except Exception:
            logger.exception("releasing after the %s handler for %s failed", what, conn.path)


class RequestTooLarge(ValueError):
    """The request line and headers are larger than ``max_header_bytes``."""


class HandshakeTimeout(ValueError):
    """The client did not send its request line and headers in time."""


def read_header_lines(fp: Any, budget: int) -> list[bytes]:
    """The raw header lines of a request from ``fp``, up to the blank line, reading at most ``budget`` bytes."""
    lines = []
    while True:
        line = fp.readline(budget + 1)
        budget -= len(line)
        if budget < 0:
            raise RequestTooLarge("request headers too large")
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line)


def parse_header_block(lines: list[bytes]) -> Any:
    """Header lines parsed as pywsgi's message class does (the ``email`` parser)."""
    return email.parser.Parser(_class=OldMessage).parsestr(b"".join(lines).decode("iso-8859-1"))


def read_header_block(fp: Any, budget: int) -> Any:
    """Parse request headers from ``fp``, reading at most ``budget`` bytes, as pywsgi's message class."""
    return parse_header_block(read_header_lines(fp, budget))


def mentions_websocket(lines: list[bytes]) -> bool:
    """True if any header line holds the word ``websocket`` (any case): worth parsing as an upgrade."""
    return b"websocket" in b"".join(lines).lower()


def is_lean_request_line(requestline: str) -> bool:
    """True for ``GET <target> HTTP/1.1``: the only request line an upgrade's lean path reads."""
    words = requestline.split()
    return len(words) == 3 and words[0] == "GET" and words[2] == "HTTP/1.1"


def encode_response_head(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    """``HTTP/1.1 <status>``, the header lines and the blank line, as bytes on the wire."""
    lines = [f"HTTP/1.1 {status_line}", *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def http_date(timestamp: float) -> str:
    """``Tue, 01 Dec 2026 05:44:19 GMT``: a Date header's value, as pywsgi writes it."""
    value = format_date_time(timestamp)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _plain_response(status: int, text: str) -> bytes:
    body = (text + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


_DEFAULT_LIMITS = Limits()


class _NoInput:
    """Stands in for pywsgi's request body reader once the connection is upgraded."""

    def _discard(self) -> None:
        """Nothing to discard: an upgrade request has no body."""


_NO_INPUT = _NoInput()
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
    "_header_lines",
)


class GreenHandler(WebSocketHandler):
    """A pywsgi handler: plain HTTP runs the app; ``Upgrade: websocket`` runs the hub.

    The hubs are the server's ``hubs`` attribute when it has one (``GreenServer``),
    otherwise every :class:`WebSocketServer` created in the process (so the class
    also works under gunicorn's gevent workers). A client gets ``handshake_timeout``
    seconds to send its request line and headers, at most ``max_header_bytes`` of
    them (431 beyond).
    """

    _deadline: Any = None
    #: The lean path's parsed head of an upgrade request; None for requests pywsgi parses.
    head: RequestHead | None = None

    @property
    def environ(self) -> Any:
        """The WSGI environ; for a request read by the lean path, built on first read."""
        environ = self.__dict__.get("_environ")
        if environ is None and self.head is not None:
            environ = self.__dict__["_environ"] = self._full_environ()
        return environ

    @environ.setter
    def environ(self, value: Any) -> None:
        self.__dict__["_environ"] = value

    @property
    def request_variables(self) -> Any:
        """The request's CGI variables (``PATH_INFO``, ``HTTP_*``...): the head's, or the environ."""
        head = self.head
        return head.variables if head is not None else self.environ

    def _limits(self) -> Limits:
        return getattr(self.server, "limits", None) or _DEFAULT_LIMITS

    def handle(self) -> None:
        """Serve the connection's requests; a client too slow to send its headers is dropped."""
        try:
            # pywsgi writes a response's head and body in two sends: without this,
            # every keep-alive response waits for the client's delayed ACK.
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        try:
            super().handle()
        except HandshakeTimeout:
            logger.info(
                "dropped %s: request not complete within %ss", self.client_address, self._limits().handshake_timeout
            )
        finally:
            self._cancel_deadline()

    def read_requestline(self) -> str:
        """Start the handshake clock, then read the request line."""
        self._cancel_deadline()
        limits = self._limits()
        self._deadline = gevent.Timeout.start_new(limits.handshake_timeout, HandshakeTimeout)
        return super().read_requestline()

    def read_request(self, raw_requestline: str) -> bool:
        """Read the headers within the same deadline and byte budget as the request line.

        A well-formed WebSocket upgrade's head is parsed here (the lean path);
        every other request goes on to pywsgi's parsing, which reads the same
        header lines through :meth:`MessageClass`.
        """
        self.head = None
        try:
            requestline = raw_requestline.rstrip()
            if is_lean_request_line(requestline):
                lines = read_header_lines(self.rfile, self._limits().max_header_bytes - len(requestline))
                head = None
                if mentions_websocket(lines):
                    head = parse_upgrade_head(requestline, lines, self.client_address, self._scheme())
                if head is not None:
                    self._adopt(head)
                    return True
                self._header_lines = lines
            return super().read_request(raw_requestline)
        finally:
            self._cancel_deadline()

    def _scheme(self) -> str:
        environ = getattr(self.server, "environ", None)
        return environ.get("wsgi.url_scheme", "http") if isinstance(environ, dict) else "http"

    def _adopt(self, head: RequestHead) -> None:
        """Take ``head`` as this request, setting what pywsgi's ``read_request`` would have set."""
        self.head = head
        self.requestline = head.requestline
        self.command, self.path, self.request_version = head.method, head.target, head.version
        self.headers = head
        self.content_length = head.content_length
        self.close_connection = head.fields.get("connection", "").lower() == "close"

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - pywsgi's hook name
        """The request's headers, read within ``max_header_bytes`` (or the lines already read)."""
        lines = self.__dict__.pop("_header_lines", None)
        if lines is not None:
            return parse_header_block(lines)
        return read_header_block(fp, self._limits().max_header_bytes - len(self.requestline))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def _handle_client_error(self, ex: Exception) -> Any:
        if isinstance(ex, (RequestTooLarge, HandshakeTimeout)):
            metrics.handshake_refusals["headers"] += 1
        if isinstance(ex, RequestTooLarge):
            log_limited(
                logger,
                logging.WARNING,
                "refused request",
                self._limits(),
                "refused request from %s: %s",
                self.client_address,
                ex,
                extra={"event": "request_refused", "status": 431, "cause": "headers", "ip": self.client_address[0]},
            )
            return ("431", _plain_response(431, str(ex)))
        if isinstance(ex, HandshakeTimeout):
            log_limited(
                logger,
                logging.INFO,
                "refused request",
                self._limits(),
                "refused request from %s: headers not complete in time",
                self.client_address,
                extra={"event": "request_refused", "status": 408, "cause": "headers", "ip": self.client_address[0]},
            )
            return ("408", _plain_response(408, "request headers not received in time"))
        return super()._handle_client_error(ex)

    def get_environ(self) -> dict | None:
        """pywsgi's environ, with the page's address as the browser sees it (``asok_green.core.proxies``).

        None for an upgrade read by the lean path: :attr:`environ` builds it if asked.
        """
        if self.head is not None:
            self.wsgi_input = _NO_INPUT  # an upgrade's body, if any, is never read as a body
            return None
        return self._full_environ()

    def _full_environ(self) -> dict:
        environ = super().get_environ()
        page = page_address(environ, proxy_settings(self._app_config())[0])
        if page is not None:
            environ.update(page.environ_updates())
        return environ

    def _app_config(self) -> Any:
        return getattr(getattr(self.server, "application", None), "config", None)

    def run_application(self) -> None:
        """Answer one request: the WSGI app for pages, the WebSocket hub for upgrades."""
        if browser_client.serve(self):  # the resume client's script, for any page
            return
        if dashboard.serve(self, self._hubs()):  # its own path, before the app (asok_green.ops.dashboard)
            return
        head = self.head
        if head is None:
            if not is_upgrade_request(self.environ):
                return self._run_page()
            # An upgrade pywsgi parsed (not one the lean path reads): decided the same way.
            head = RequestHead.from_environ(self.environ, self.requestline or "")
        self._upgrade(head)

    def _run_page(self) -> None:
        if getattr(self.server, "draining", False):
            self.close_connection = True  # the next request belongs to the process that replaces this one
        return WSGIHandler.run_application(self)

    def _hubs(self) -> Iterable[WebSocketServer]:
        return getattr(self.server, "hubs", None) or WebSocketServer.instances()

    def _find_route(self, path: str) -> tuple[WebSocketServer | None, Route | None, dict]:
        for hub in self._hubs():
            route, params = hub.match(path)
            if route is not None:
                return hub, route, params
        return None, None, {}

    def _admit(self, path: str, env: Any) -> tuple[Any, Any, dict, Refusal | None]:
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

    def _upgrade(self, head: RequestHead) -> None:
        env = head.variables
        # One spelling per path: a non-canonical one gets 404 (asok_green.core.routing).
        path = request_path(env.get("PATH_INFO") or "/")
        if path is None:
            raw = repr(env.get("PATH_INFO"))
            self._refuse(Refusal(404, f"no WebSocket route matches {raw}: not a canonical path"), raw, env)
            return
        policy, prefix = proxy_settings(self._app_config())
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
        self.wsgi_input = _NO_INPUT
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
        """Write a whole response with one ``sendall``, noted as pywsgi notes its own for the log."""
        data = encode_response_head(status_line, headers) + body
        self.status = status_line.encode("latin-1")
        self._orig_status = status_line
        self.code = int(status_line[:3])
        self.headers_sent = True
        self.socket.sendall(data)
        self.response_length = len(data)

    def _refuse(self, refusal: Refusal, path: str, env: Any) -> None:
        REFUSALS.note_handshake(refusal, self._hubs(), path)
        status = int(refusal.status_line[:3])
        cause = metrics.refusal_cause(status, refusal.reason)
        metrics.handshake_refusals[cause] += 1
        # A flood of refused handshakes is logged as a few lines and a count, not a line each.
        log_limited(
            logger,
            logging.WARNING,
            f"refused WebSocket {refusal.status_line[:3]}",
            self._limits(),
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

    def log_request(self) -> None:
        """Log finished HTTP requests; an upgraded connection is logged when it opens, not here."""
        if self.code == 101:
            return
        if getattr(self.server.log, "_logger", None) is access_logger:
            # pywsgi's line, with its parts as fields for structured logs.
            access_logger.info(self.format_request(), extra=jsonlog.request_fields(self))
            return
        WSGIHandler.log_request(self)


def _locate_page(head: RequestHead, policy: Any) -> None:
    """Where the browser loaded the page from, when a proxy may say so: as ``get_environ`` notes it."""
    page = page_address(head.variables, policy)
    if page is None:
        return
    head.variables.update(page.environ_updates())
    if page.forwarded:
        head.fields["host"] = page.authority


class GreenServer(WSGIServer):
    """``gevent.pywsgi.WSGIServer`` serving ``application`` and ``hubs`` on one listener."""

    handler_class = GreenHandler
    #: Upgraded connections outlive their handler's greenlet; :meth:`shutdown` waits for them.
    watches_connections = True
    #: True once a restart's successor serves and this server winds down (``asok_green.process.drain``).
    draining = False
    #: Accepted connections whose handler still runs (HTTP requests, and handshakes not yet upgraded).
    requests_in_flight = 0

    def __init__(self, listener: Any, application: Any, hubs: Iterable[WebSocketServer], **kwargs: Any):
        """Listen on ``listener`` (an address or a socket); nothing is accepted before ``start``."""
        kwargs.setdefault("log", LoggingLogAdapter(access_logger, logging.INFO))
        kwargs.setdefault("error_log", LoggingLogAdapter(logging.getLogger("asok_green.error"), logging.ERROR))
        super().__init__(listener, application, **kwargs)
        self.hubs = list(hubs)
        self.stopped = Event()
        self._kept_open: dict[int, Any] = {}

    def keep_open(self, sock: Any) -> None:
        """Leave ``sock`` open when its handler's greenlet ends: a connection owns it now."""
        self._kept_open[id(sock)] = sock

    def do_handle(self, *args: Any) -> None:
        """Hand an accepted socket to its handler's greenlet, counted from now until :meth:`do_close`.

        Counted at accept, not when the greenlet first runs: a draining server
        must not take a connection accepted but not yet started for none.
        """
        self.requests_in_flight += 1
        super().do_handle(*args)

    def do_close(self, sock: Any, *args: Any) -> None:
        """Close a handled client socket, unless a connection took it over (:meth:`keep_open`)."""
        self.requests_in_flight -= 1
        if self._kept_open.pop(id(sock), None) is sock:
            return
        super().do_close(sock, *args)

    @property
    def limits(self) -> Limits:
        """The limits of the first hub: handshake time and header size apply per listener."""
        return self.hubs[0].limits if self.hubs else _DEFAULT_LIMITS

    def connection_count(self) -> int:
        """WebSockets open across every hub."""
        return sum(hub.connection_count for hub in self.hubs)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, close every WebSocket with 1001, wait for them (bounded), then stop."""
        if self.stopped.is_set() or getattr(self, "_shutting_down", False):
            return
        self._shutting_down = True
        if timeout is None:
            timeout = max(hub.limits.shutdown_timeout for hub in self.hubs) if self.hubs else 1.0
        logger.info(
            "shutting down: closing %d WebSocket(s) with 1001",
            self.connection_count(),
            extra={"event": "shutting_down", "connections": self.connection_count()},
        )
        self.close()
        for hub in self.hubs:
            hub.stop()
        with gevent.Timeout(timeout, False):
            while self.connection_count():
                gevent.sleep(0.02)
        left = self.connection_count()
        if left:
            logger.warning("shutdown: dropping %d WebSocket(s) that did not close in %.1fs", left, timeout)
        self.stopped.set()


def make_server(
    app: Any,
    ws: WebSocketServer | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    listener: Any = None,
    **kwargs: Any,
) -> GreenServer:
    """A started server for ``app`` and its WebSocket handlers, listening on ``host:port``.

    ``ws`` defaults to every ``WebSocketServer`` created so far (a new one bound
    to ``app`` if there is none). ``listener``, a listening socket, is used
    instead of binding ``host:port``. The app's ``WS_PORT`` is set to the
    serving port, so Asok's ``window.asokWS`` connects to this same port.
    """
    open_files_limit()
    hubs = [ws] if ws is not None else WebSocketServer.instances() or [WebSocketServer(app=app)]
    server = GreenServer(listener if listener is not None else (host, port), app, hubs, **kwargs)
    server.init_socket()
    port = server.server_port
    config = getattr(app, "config", None)
    if isinstance(config, dict) or hasattr(config, "__setitem__"):
        config["WS_PORT"] = port
    for hub in hubs:
        hub.attach(app, port)
    server.application = metrics.wrap_app(app, hubs)
    server.start()
    return server


def serve(
    app: Any,
    ws: WebSocketServer | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_hangup: Callable[[GreenServer], None] | None = None,
    **kwargs: Any,
) -> None:
    """Serve ``app`` and its WebSockets on ``host:port`` until SIGINT or SIGTERM.

    The process must have been monkey-patched by gevent first
    (``python -m asok_green serve`` and ``asok serve --gevent`` do it for you).
    With ``ssl_context=`` (or gevent's ``certfile=``/``keyfile=``) the port
    serves https and wss. ``on_hangup(server)`` runs in a greenlet of its own
    on each SIGHUP (``asok serve --gevent`` restarts there).
    """
    from ..process.drain import tell_parent_ready

    server = make_server(app, ws, host, port, **kwargs)
    url = f"{'https' if server.ssl_enabled else 'http'}://{host}:{server.server_port}"
    if jsonlog.json_requested(getattr(app, "config", None)):
        logger.info("serving %s (HTTP and WebSocket on the same port)", url, extra={"event": "serving", "url": url})
    else:
        print(f"asok_green: serving {url} (HTTP and WebSocket on the same port)", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.spawn, server.shutdown)
    if on_hangup is not None:
        gevent.signal_handler(signal.SIGHUP, gevent.spawn, on_hangup, server)
    tell_parent_ready()  # only now: the parent may send SIGHUP as soon as it hears this
    server.stopped.wait()
    logger.info("stopped", extra={"event": "stopped"})
    sys.stdout.flush()
