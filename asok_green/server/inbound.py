"""The reading half of a connection: from the client's bytes to its handlers, in turns.

A connection that owns its socket has no greenlet while it is idle. A read
watcher on the socket spawns a short-lived reader greenlet when data arrives;
it reads what is there, runs the handlers in order, and re-arms the watcher
when the socket is drained (:meth:`Inbound.watch`). Any other socket is read
by the greenlet that accepted it (:meth:`Inbound.run`). Either way a slow
handler only delays its own connection, and a fast client cannot monopolise
the process: a reader lets every other ready greenlet run between two chunks
it reads, between two ``_PARSE_SLICE`` bytes it parses, and after every
``_MESSAGES_PER_TURN`` messages it handles. A connection the server fails
(protocol error, message rate) reads nothing more from its client.

The reader's buffer is bounded by ``max_message_size``, fragment headers
included.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from time import monotonic
from typing import Any

import gevent

from ..core.log_fields import conn_fields
from ..core.logs import log_limited
from ..core.rate import TokenBucket
from ..protocol.deflate import Inflater, PerMessageDeflate
from ..protocol.frames import (
    CLOSE_ABNORMAL,
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    OP_TEXT,
    Close,
    Message,
    MessageReader,
    Ping,
    ProtocolError,
)
from .outbound import CLOSED, OPEN, Outbound

__all__ = ["Inbound", "take_turn"]

logger = logging.getLogger("asok_green")

#: Seconds a reader greenlet waits for more data before it leaves the connection to its watcher.
_LINGER = 1.0

#: Bytes one ``recv`` may return: a reader yields to others between two of them.
_RECV_SIZE = 64 * 1024

#: Messages a reader hands to its handler before it lets every other ready greenlet run.
_MESSAGES_PER_TURN = 32

#: Bytes a reader parses at once, between two turns of the others.
_PARSE_SLICE = 2 * 1024


def take_turn() -> None:
    """Let every other ready greenlet run, including those whose sockets became readable.

    ``gevent.sleep(0)`` is not enough: the loop keeps running callbacks (a chain
    of ``sleep(0)``) for up to its switch interval before it polls for I/O,
    so a flooding reader would still hold a probe's readable socket back by
    milliseconds. ``gevent.idle()`` waits until the loop has polled and run
    everything that was ready.
    """
    gevent.idle()


class Inbound(Outbound):
    """A connection's reader: the frame parser, inflation, the message-rate limit and dispatch to handlers.

    ``deflate`` holds the permessage-deflate parameters agreed in the
    handshake (None: not compressed); ``last_seen`` is when the client last
    sent anything (keep-alive reads it).
    """

    __slots__ = (
        "deflate",
        "last_seen",
        "_reader",
        "_inflater",
        "_leftover",
        "_rate",
        "_watcher",
        "_on_message",
        "_on_end",
    )

    def __init__(
        self,
        server: Any,
        sock: socket.socket,
        leftover: bytes,
        deflate: PerMessageDeflate | None,
        own_socket: bool,
    ) -> None:
        """Read from ``sock`` for ``server``; ``leftover`` is data the client sent right after its handshake."""
        Outbound.__init__(self, server, sock, own_socket)
        self.deflate = deflate
        self.last_seen = monotonic()
        limits = server.limits
        self._reader = MessageReader(max_message_size=limits.max_message_size, allow_rsv1=deflate is not None)
        self._inflater: Inflater | None = None
        self._leftover = leftover
        self._rate = TokenBucket.for_limits(limits)
        self._watcher: Any = None
        self._on_message: Callable | None = None
        self._on_end: Callable[[], None] | None = None

    def run(self, on_message: Callable | None) -> None:
        """Read until the connection ends, dispatching each message to ``on_message``."""
        recv = self.sock.recv
        data, self._leftover = self._leftover, b""
        while True:
            if not data:
                try:
                    data = recv(_RECV_SIZE)  # the one place a connection waits for its client
                except OSError:
                    break
                if not data:
                    break
                self.last_seen = monotonic()
                self.server.stats["bytes_received"] += len(data)
            if not self._receive(data, on_message):
                return
            data = b""
            # recv returns without yielding while data is waiting: let the others run.
            take_turn()
            if self.state is CLOSED:
                break
        self._lost()

    def watch(self, on_message: Callable | None, on_end: Callable[[], None]) -> None:
        """Serve reads from the socket's read watcher: no greenlet of its own while idle.

        Returns at once. ``on_end`` runs (in a reader greenlet) when the
        connection ends, and must call :meth:`finish`.
        """
        self._on_message, self._on_end = on_message, on_end
        self._watcher = self.sock._read_event  # unused otherwise: nothing else waits to read this socket
        if self._leftover:
            gevent.spawn(self._read_burst)
        else:
            self._watcher.start(self._readable)

    def _readable(self) -> None:
        """The watcher's callback: start a reader greenlet, and stop watching until it is done."""
        # Runs in the hub, so it must not block or raise. The watcher stays
        # stopped while the reader runs: a client is not read faster than its
        # handlers go.
        self._watcher.stop()
        gevent.spawn(self._read_burst)

    def _read_burst(self) -> None:
        """Reader greenlet: handle what the client sent, then re-arm the watcher, or end."""
        ended = True
        try:
            ended = self._read_available()
        finally:
            if ended:
                self._lost()
                on_end, self._on_end, self._on_message = self._on_end, None, None
                on_end()
            else:
                self._watcher.start(self._readable)

    def _read_available(self) -> bool:
        """Read and handle data until the socket would block (False) or the connection ends (True)."""
        recv = self.sock._sock.recv  # the kernel socket: never waits
        data, self._leftover = self._leftover, b""
        # Whether other greenlets have run since this one handled a chunk.
        others_ran = True
        while True:
            if not data:
                try:
                    data = recv(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    if not self._await_more(_LINGER):
                        return False
                    others_ran = True
                    continue
                except OSError:
                    return True
                if not data:
                    return True
                self.last_seen = monotonic()
                self.server.stats["bytes_received"] += len(data)
            if not others_ran:
                # The client keeps the socket full: take turns with everyone else.
                take_turn()
                if self.state is CLOSED:
                    return True
            others_ran = False
            if not self._receive(data, self._on_message):
                return True
            data = b""

    def _await_more(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client to send more; False if it stayed quiet.

        A client in a conversation usually answers soon: keeping the reader
        greenlet that long saves a spawn and a watcher restart per message,
        and a quiet client still ends up with no greenlet of its own.
        """
        try:
            with gevent.Timeout(seconds, False):
                gevent.get_hub().wait(self._watcher)
                return True
        except OSError:
            return True  # the socket was closed meanwhile: the next read says so
        return False

    def _receive(self, data: bytes, on_message: Callable | None) -> bool:
        """Handle ``data`` from the client: False once the connection is ending.

        The data is parsed a slice at a time, with a turn for every other
        greenlet between two slices: a chunk of tiny frames is thousands of
        messages.
        """
        if len(data) <= _PARSE_SLICE:
            return self._receive_slice(data, on_message)
        for start in range(0, len(data), _PARSE_SLICE):
            if start:
                take_turn()
                if self.state is CLOSED:
                    return False
            if not self._receive_slice(data[start : start + _PARSE_SLICE], on_message):
                return False
        return True

    def _receive_slice(self, data: bytes, on_message: Callable | None) -> bool:
        """Handle ``data`` from the client: False once the connection is ending.

        Once the connection is closing, messages are dropped unread: only the
        client's close frame still matters.
        """
        try:
            events = self._reader.feed(data)
            error = None
        except ProtocolError as exc:
            # What the client sent before breaking the protocol still counts.
            events, error = exc.events, exc
        handled = 0
        for event in events:
            kind = type(event)
            if kind is Message:
                if self.state is not OPEN:
                    continue
                payload = event.data
                if event.compressed:
                    try:
                        payload = self._inflate(event)
                    except ProtocolError as exc:
                        error = exc
                        break
                if on_message is not None:
                    if handled == _MESSAGES_PER_TURN:
                        take_turn()  # a chunk of tiny messages: let the others run
                        handled = 0
                        if self.state is not OPEN:
                            continue
                    handled += 1
                    self._dispatch(on_message, payload)
            elif kind is Ping:
                if self.state is OPEN:
                    self.answer_ping(event.payload)
            elif kind is Close:
                self.answer_close(event.code, event.reason)
                return False
        if error is not None:
            if self.state is OPEN:
                self.server.stats["protocol_errors"] += 1
                log_limited(
                    logger,
                    logging.INFO,
                    "protocol error",
                    self.server.limits,
                    "protocol error from %s on %s: %s",
                    self.addr,
                    self.path,
                    error,
                    extra=conn_fields(self, "protocol_error", close_code=error.code, cause=error.reason),
                )
                self.close(error.code, error.reason)
            return False
        return self.state is not CLOSED and not self._reader.done

    def _fail(self, code: int, reason: str) -> None:
        """Close for the client's fault, and read nothing more from it (RFC 6455 section 7.1.7)."""
        self._reader.stop()
        self.close(code, reason)

    def _lost(self) -> None:
        """The stream ended without a closing handshake."""
        if self.state is OPEN:
            self.state = CLOSED
            self.close_code = CLOSE_ABNORMAL

    def _dispatch(self, handler: Callable, data: str | bytes) -> None:
        """Run ``handler`` on one message, within the message-rate limit, timed and counted."""
        if self._rate is not None and not self._rate.allow(monotonic()):
            self.server.stats["rate_limited"] += 1
            log_limited(
                logger,
                logging.WARNING,
                "message rate limit",
                self.server.limits,
                "closing %s on %s: over %s messages/s",
                self.addr,
                self.path,
                self._rate.rate,
                extra=conn_fields(self, "rate_limited", close_code=CLOSE_POLICY, cause="message rate"),
            )
            self._fail(CLOSE_POLICY, "message rate limit exceeded")
            return
        started = monotonic()
        try:
            handler(self, data)
        except Exception:
            logger.exception(
                "error in message handler for %s (from %s)",
                self.path,
                self.addr,
                extra=conn_fields(self, "handler_error", handler="message"),
            )
        finally:
            server = self.server
            server.handler_times.handled(handler, monotonic() - started)
            server.after_handler()

    def _inflate(self, message: Message) -> str | bytes:
        """The payload of a compressed message, decoded if it is text."""
        inflater = self._inflater
        if inflater is None:
            limit = self.server.limits.max_message_size
            inflater = self._inflater = Inflater(limit, self.deflate.client_no_context_takeover)
        data = inflater.inflate(message.data)
        if message.opcode != OP_TEXT:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in text message") from None

    def finish(self, flush_timeout: float) -> None:
        """At the end: stop watching the socket, flush what is queued (bounded), then release the socket."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        super().finish(flush_timeout)
