"""The one-port handler: pages go to the WSGI app, WebSocket upgrades to the hub.

``GreenHandler`` extends gevent-websocket's ``WebSocketHandler`` through pywsgi's
hooks (``read_request``, ``get_environ``, ``run_application``); the server
class that uses it is :class:`asok_green.server.green_server.GreenServer`.

Every request's head is first read strictly (:mod:`asok_green.protocol.http_head`):
a malformed or ambiguous head (request smuggling's raw material) is answered
400 and the connection closed before pywsgi or the app sees anything. Plain
HTTP requests then take pywsgi's path, their bodies read under the body
deadlines (:mod:`asok_green.server.body`); a small body is read whole before
the app runs, so a body that stalls or is cut short is answered 408 or 400 by
the server, never seen by the app. A well-formed WebSocket
upgrade request takes a lean one: its head is parsed once into a
:class:`~asok_green.protocol.request_head.RequestHead` (no ``email`` parser), the
handshake is decided on it (:mod:`asok_green.server.upgrade`), and the full
WSGI environ is built only if something reads ``handler.environ``.

The layers above plug in here without the server importing them: a subclass
sets :attr:`GreenHandler.endpoints`, answered before the app (the API layer's
:mod:`asok_green.api.serving` adds the resume client's script and the dashboard).
"""

from __future__ import annotations

import email.parser
import io
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import gevent
from gevent.pywsgi import Input, LoggingLogAdapter, OldMessage, WSGIHandler

from ..core.log_fields import request_fields
from ..core.logs import log_limited
from ..core.proxies import page_address, proxy_settings
from ..core.refusals import handshake_refusals
from ..protocol.handshake import is_upgrade_request
from ..protocol.http_head import BadHead, Framing, body_framing, read_fields
from ..protocol.request_head import RequestHead, upgrade_head
from .body import BodyError, BodyReader
from .upgrade import NO_INPUT, UpgradeHandler

__all__ = [
    "AccessLog",
    "GreenHandler",
    "HandshakeTimeout",
    "RequestTooLarge",
    "is_lean_request_line",
    "mentions_websocket",
    "parse_header_block",
    "read_header_block",
    "read_header_lines",
]

logger = logging.getLogger("asok_green")
access_logger = logging.getLogger("asok_green.access")


class RequestTooLarge(ValueError):
    """The request line and headers are larger than ``max_header_bytes``."""


class HandshakeTimeout(ValueError):
    """The client did not send its request line and headers in time."""


#: Bodies up to this many bytes are read whole, under the body deadlines, before the app runs.
PREFETCH_BODY = 1 << 20


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


def _ip(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _path_of(target: str) -> str:
    """A request target's path, cut to a length a log line can hold."""
    path = target.partition("?")[0]
    return path if len(path) <= 200 else path[:200] + "..."


def _plain_response(status: int, text: str) -> bytes:
    body = (text + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class AccessLog(LoggingLogAdapter):
    """pywsgi's request log, written to the ``asok_green.access`` logger with each line's fields."""

    def __init__(self, level: int = logging.INFO) -> None:
        """Log finished requests at ``level``."""
        super().__init__(access_logger, level)


class GreenHandler(UpgradeHandler):
    """A pywsgi handler: plain HTTP runs the app; ``Upgrade: websocket`` runs the hub.

    A client gets ``handshake_timeout`` seconds to send its request line and
    headers, at most ``max_header_bytes`` of them (431 beyond). Each of
    :attr:`endpoints` may answer a request before the app does.
    """

    _deadline: Any = None

    #: Tried in order before the app and the hub, each called with the handler: it answers the
    #: request and returns True, or returns False to let it pass. Subclasses set their own.
    endpoints: tuple[Callable[[GreenHandler], bool], ...] = ()

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
            log_limited(
                logger,
                logging.INFO,
                "dropped",
                self.limits,
                "dropped %s: request not complete within %ss",
                self.client_address,
                self.limits.handshake_timeout,
                extra={"event": "request_dropped", "cause": "headers", "ip": _ip(self.client_address)},
            )
        finally:
            self._cancel_deadline()

    def read_requestline(self) -> str:
        """Start the handshake clock, then read the request line."""
        self._cancel_deadline()
        limits = self.limits
        self._deadline = gevent.Timeout.start_new(limits.handshake_timeout, HandshakeTimeout)
        return super().read_requestline()

    def read_request(self, raw_requestline: str) -> bool:
        """Read the headers within the same deadline and byte budget as the request line.

        Every head is read strictly first (:class:`BadHead`: 400 and close).
        A well-formed WebSocket upgrade's head is then taken as it is (the
        lean path); every other request goes on to pywsgi's parsing, which
        reads the same header lines through :meth:`MessageClass`.
        """
        self.head = None
        self.framing = None
        try:
            requestline = self.requestline = raw_requestline.rstrip()
            words = requestline.split()
            self.path = words[1] if len(words) > 1 else ""
            lines = read_header_lines(self.rfile, self.limits.max_header_bytes - len(requestline))
            pairs = read_fields(lines)
            framing = self.framing = body_framing(words[2] if len(words) == 3 else "", pairs)
            if framing.websocket and is_lean_request_line(requestline):
                head = upgrade_head(requestline, pairs, self.client_address, self._scheme())
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
        """The request's headers as pywsgi reads them, from the lines already read strictly."""
        lines = self.__dict__.pop("_header_lines", None)
        if lines is not None:
            return parse_header_block(lines)
        return read_header_block(fp, self.limits.max_header_bytes - len(self.requestline))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.close()
            self._deadline = None

    def _handle_client_error(self, ex: Exception) -> Any:
        if isinstance(ex, (RequestTooLarge, HandshakeTimeout)):
            handshake_refusals["headers"] += 1
        if isinstance(ex, BadHead):
            handshake_refusals["protocol"] += 1
            self._log_refusal(400, "head", str(ex))
            return ("400", _plain_response(400, f"bad request: {ex}"))
        if isinstance(ex, RequestTooLarge):
            log_limited(
                logger,
                logging.WARNING,
                "refused request",
                self.limits,
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
                self.limits,
                "refused request from %s: headers not complete in time",
                self.client_address,
                extra={"event": "request_refused", "status": 408, "cause": "headers", "ip": self.client_address[0]},
            )
            return ("408", _plain_response(408, "request headers not received in time"))
        return super()._handle_client_error(ex)

    def _log_refusal(self, status: int, cause: str, reason: str) -> None:
        log_limited(
            logger,
            logging.WARNING,
            "refused request",
            self.limits,
            "refused request from %s for %s: %s",
            self.client_address,
            _path_of(getattr(self, "path", "") or ""),
            reason,
            extra={"event": "request_refused", "status": status, "cause": cause, "ip": self.client_address[0]},
        )

    def get_environ(self) -> dict | None:
        """pywsgi's environ, with the page's address as the browser sees it (``asok_green.core.proxies``).

        None for an upgrade read by the lean path: :attr:`environ` builds it if asked.
        """
        if self.head is not None:
            self.wsgi_input = NO_INPUT  # an upgrade's body, if any, is never read as a body
            return None
        return self._full_environ()

    def _full_environ(self) -> dict:
        environ = super().get_environ()
        page = page_address(environ, proxy_settings(self.app_config)[0])
        if page is not None:
            environ.update(page.environ_updates())
        framing = self.framing
        if framing is not None and framing.has_body and self.head is None:
            limits = self.limits
            self.wsgi_input.rfile = BodyReader(self.rfile, limits.body_timeout, limits.body_min_rate)
        return environ

    def run_application(self) -> None:
        """Answer one request: an endpoint that takes it, else the WSGI app for pages, the hub for upgrades."""
        for endpoint in self.endpoints:
            if endpoint(self):
                return
        head = self.head
        if head is None:
            if not is_upgrade_request(self.environ):
                return self._run_page()
            # An upgrade pywsgi parsed (not one the lean path reads): decided the same way.
            head = RequestHead.from_environ(self.environ, self.requestline or "")
        self.upgrade(head)

    def _run_page(self) -> None:
        if getattr(self.server, "draining", False):
            self.close_connection = True  # the next request belongs to the process that replaces this one
        if not self._prefetch_body():
            return None
        return WSGIHandler.run_application(self)

    def _prefetch_body(self) -> bool:
        """Read a small body whole under the body deadlines; False (answered 408/400) if it stalls or ends early."""
        framing: Framing | None = self.framing
        length = framing.content_length if framing is not None else None
        if not length or length > PREFETCH_BODY or not isinstance(getattr(self.wsgi_input, "rfile", None), BodyReader):
            return True
        try:
            body = self.wsgi_input.read(length)  # through pywsgi's reader: it answers "Expect: 100-continue"
        except BodyError as exc:
            self.wsgi_input = NO_INPUT
            self.close_connection = True
            self._log_refusal(exc.status, "body", exc.strerror or "")
            try:
                text = f"{exc.strerror}\n".encode()
                self.start_response(
                    f"{exc.status} {HTTPStatus(exc.status).phrase}",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(text))),
                        ("Connection", "close"),
                    ],
                )
                self.write(text)
            except OSError:
                pass
            return False
        self.wsgi_input = Input(io.BytesIO(body), length)
        self.environ["wsgi.input"] = self.wsgi_input
        return True

    def log_request(self) -> None:
        """Log finished HTTP requests; an upgraded connection is logged when it opens, not here."""
        if self.code == 101:
            return
        if isinstance(getattr(self.server, "log", None), AccessLog):
            # pywsgi's line, with its parts as fields for structured logs.
            access_logger.info(self.format_request(), extra=request_fields(self))
            return
        WSGIHandler.log_request(self)
