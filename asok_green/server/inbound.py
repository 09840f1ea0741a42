"""The reading half of a connection: from the client's bytes to its handlers, in turns.

A connection that owns its socket has no greenlet while it is idle. The read
watcher on the socket looks at what arrives: pings and pongs it takes on the
spot; for anything else it queues the connection for a short-lived reader
greenlet (shared with other connections, see :mod:`.readers`), which reads
what is there, runs the handlers in order, and re-arms the watcher when the
socket is drained (:meth:`Inbound.watch`). Once quiet again, the connection
keeps nothing of the read: no reader, no frame parser, no buffer. Any other
socket is read by the greenlet that accepted it (:meth:`Inbound.run`). Either
way a slow handler only delays its own connection, and a fast client cannot
monopolise the process: a reader lets every other ready greenlet run between
two chunks it reads, between two ``_PARSE_SLICE`` bytes it parses, and after
every ``_MESSAGES_PER_TURN`` messages it handles. A connection the server fails
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
from gevent.hub import Waiter

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
    control_frames_length,
)
from .outbound import CLOSED, OPEN, Outbound
from .readers import LINGERING, READS, take_turn

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


def _linger_timer(hub: Any, seconds: float) -> Any:
    """The timer the current reader greenlet waits with, made once per greenlet and restarted for each wait.

    A ``gevent.Timeout`` per wait made and freed a timer and an exception
    object for every message of a conversation: 7-23% of an echo's CPU.
    """
    reader = gevent.getcurrent()
    kept = getattr(reader, "asok_linger_timer", None)
    if kept is None or kept[0] != seconds:
        kept = reader.asok_linger_timer = (seconds, hub.loop.timer(seconds))
    return kept[1]


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
        # Made when the client sends something, dropped once it holds nothing (see _parser).
        self._reader: MessageReader | None = None
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
            READS.add(self._read_burst)
        else:
            self._watcher.start(self._readable)

    def _readable(self) -> None:
        """The watcher's callback, in the hub: what a quiet client sent is read here or by a reader.

        Pings and pongs are read and answered right here, with no greenlet: a
        keep-alive round's answers cost no reader each. Anything else (a data
        frame, a close, a frame not complete yet, the end of the stream) is
        left in the socket for a reader greenlet (:mod:`.readers`), and the
        watcher stays stopped until the reader is done: a client is not read
        faster than its handlers go. Nothing is read or parsed before a reader
        takes it, so a crowd of clients speaking at once costs a queue entry
        each until then, not their messages.
        """
        # Runs in the hub, so it must not block or raise.
        sock = self.sock._sock
        try:
            head = sock.recv(_PARSE_SLICE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        reader = self._reader
        if head and self.state is not CLOSED and (reader is None or reader.at_rest):
            size = len(head)
            if control_frames_length(head, pings=False) == size:
                self._read_control(sock, size, pings=False)
                return
            # A ping is answered here only when its pong can go straight out (nothing queued).
            if self.writes_straight and control_frames_length(head) == size:
                self._read_control(sock, size, pings=True)
                return
        self._watcher.stop()
        READS.add(self._read_burst)

    def _read_control(self, sock: socket.socket, size: int, pings: bool) -> None:
        """Read ``size`` bytes of whole pongs (and with ``pings``, pings) from ``sock``; answer the pings.

        Runs in the hub. A pong only says the client is there: its bytes are
        not even parsed.
        """
        try:
            data = sock.recv(size)
        except OSError:
            return  # the watcher fires again, and a reader finds out what went wrong
        self.last_seen = monotonic()
        self.server.stats["bytes_received"] += len(data)
        if not pings:
            return
        try:
            events, error = self._parser().feed(data), None
        except ProtocolError as exc:  # not for frames control_frames_length took; handled all the same
            events, error = exc.events, exc
        self._handle(events, error, None)
        self._drop_parser()

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
                self._drop_parser()
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
        and a quiet client still ends up with no greenlet of its own. At most
        ``readers.MAX_LINGERING`` readers wait at once, and none while other
        connections' reads are waiting for a reader (see :mod:`.readers`).
        """
        if READS.waiting or not LINGERING.take():
            return False
        hub = gevent.get_hub()
        timer = _linger_timer(hub, seconds)
        waiter = Waiter(hub)
        try:
            self._watcher.start(waiter.switch, True)
            timer.start(waiter.switch, False)
            return waiter.get()
        except OSError:
            return True  # the socket was closed meanwhile: the next read says so
        finally:
            timer.stop()
            self._watcher.stop()
            LINGERING.give()

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
        """Parse and handle ``data`` from the client: False once the connection is ending."""
        try:
            events = self._parser().feed(data)
            error = None
        except ProtocolError as exc:
            # What the client sent before breaking the protocol still counts.
            events, error = exc.events, exc
        return self._handle(events, error, on_message)

    def _handle(self, events: list, error: ProtocolError | None, on_message: Callable | None) -> bool:
        """Handle ``events`` from the client, then ``error`` if it broke the protocol: False once ending.

        Once the connection is closing, messages are dropped unread: only the
        client's close frame still matters.
        """
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
        reader = self._reader
        return self.state is not CLOSED and (reader is None or not reader.done)

    def _parser(self) -> MessageReader:
        """The frame reader, made when the client next sends something: a quiet connection keeps none."""
        reader = self._reader
        if reader is None:
            limit = self.server.limits.max_message_size
            reader = self._reader = MessageReader(max_message_size=limit, allow_rsv1=self.deflate is not None)
        return reader

    def _drop_parser(self) -> None:
        """Let go of the frame reader if it holds nothing between two messages."""
        reader = self._reader
        if reader is not None and reader.at_rest:
            self._reader = None

    def _fail(self, code: int, reason: str) -> None:
        """Close for the client's fault, and read nothing more from it (RFC 6455 section 7.1.7)."""
        self._parser().stop()
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
            # A client can raise the same error with every message: its tracebacks are rate-limited.
            log_limited(
                logger,
                logging.ERROR,
                "message handler error",
                self.server.limits,
                "error in message handler for %s (from %s)",
                self.path,
                self.addr,
                extra=conn_fields(self, "handler_error", handler="message"),
                exc_info=True,
            )
        finally:
            server = self.server
            server.handler_times.handled(handler, monotonic() - started)
            server.after_handler()

    def _inflate(self, message: Message) -> str | bytes:
        """The payload of a compressed message, decoded if it is text."""
        inflater = self._inflater
        if inflater is None:
            fresh = self.deflate.client_no_context_takeover
            inflater = Inflater(self.server.limits.max_message_size, fresh)
            if not fresh:
                self._inflater = inflater  # it keeps the client's compression context from message to message
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
