"""Connection: one client's WebSocket, as a handler sees it, with its own outbound queue.

Writes never block the caller. ``send_frame`` first tries a non-blocking write
straight to the socket; whatever the kernel does not take goes on this
connection's bounded queue, drained by a writer greenlet that exists only while
there is something to drain. A client whose queue passes its limit is closed
(1008) instead of slowing anyone else down.

Reads: a connection that owns its socket has no greenlet while it is idle. The
read watcher on the socket reads what arrives; pings and pongs it answers on
the spot, anything else it hands to a short-lived reader greenlet (shared with
other connections, see :mod:`.readers`), which runs the handlers in order and
re-arms the watcher when the socket is drained (``watch``). Once quiet again,
the connection keeps nothing of the read: no reader, no frame parser, no
buffer, no send queue. Any other socket is read by the greenlet that accepted
it (``run``). Either way a slow handler only delays its own connection, and a
fast client cannot monopolise the process: a reader lets every other ready
greenlet run between two chunks it reads, between two ``_PARSE_SLICE`` bytes it
parses, and after every ``_MESSAGES_PER_TURN`` messages it handles. A
connection the server fails (protocol error, message rate) reads nothing more
from its client.

Every per-connection buffer has a bound: the reader's (``max_message_size``,
fragment headers included), the outbound queue (``max_queue``, each queued
frame charged its bookkeeping too), and pongs owed to a client that does not
read (at most one waits in the queue: RFC 6455 lets a server answer only the
latest ping).
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket

from ..core.logs import log_limited
from ..ops.jsonlog import conn_fields
from ..protocol import envelopes
from ..protocol.deflate import Inflater, PerMessageDeflate, compressed_frame
from ..protocol.frames import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    OP_BINARY,
    OP_CLOSE,
    OP_PONG,
    OP_TEXT,
    Close,
    Message,
    MessageReader,
    Ping,
    ProtocolError,
    control_frames_length,
    encode_close,
    encode_frame,
)
from .readers import LINGERING, READS, take_turn

if TYPE_CHECKING:
    from .hub import WebSocketServer

logger = logging.getLogger("asok_green")

OPEN, CLOSING, CLOSED = "open", "closing", "closed"

#: Seconds a reader greenlet waits for more data before it leaves the connection to its watcher.
_LINGER = 1.0

#: How many queued bytes one write may coalesce into a single ``send``.
_COALESCE_LIMIT = 64 * 1024

#: Bytes one ``recv`` may return: a reader yields to others between two of them.
_RECV_SIZE = 64 * 1024

#: Messages a reader hands to its handler before it lets every other ready greenlet run.
_MESSAGES_PER_TURN = 32

#: Bytes a reader parses at once, between two turns of the others.
_PARSE_SLICE = 2 * 1024

#: Bytes each queued frame is charged on top of its length toward ``max_queue``:
#: its object and its slot in the queue, so that many tiny frames cost what they hold.
_QUEUE_ENTRY_COST = 64

#: First byte of an unfragmented pong frame, as the server sends it.
_PONG_HEAD = 0x80 | OP_PONG


def message_payload(message: str | bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """``(opcode, payload)`` for ``message``: text for ``str``, binary for bytes-like."""
    if isinstance(message, str):
        return OP_TEXT, message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return OP_BINARY, bytes(message)
    raise TypeError(f"WebSocket messages are str or bytes, not {type(message).__name__}")


def encode_message(message: str | bytes | bytearray | memoryview) -> bytes:
    """One complete, uncompressed frame for ``message``: text for ``str``, binary for bytes-like."""
    return encode_frame(*message_payload(message))


class Outgoing:
    """One message encoded once for any number of recipients.

    ``frame`` is the plain frame, built at once. :meth:`frame_for` gives the
    frame for one connection: the plain one, or for a connection with
    permessage-deflate the compressed one, built the first time a window size
    asks for it and shared after that. The server never takes compression
    context over between messages, so the same bytes suit every such client.

    :meth:`v1_frame_for` gives the frame for an ``asok-green.v1`` connection:
    the message in its JSON envelope (with its stream, epoch and offset when it
    is a message of a stream that keeps history), built the first time a v1
    connection needs it and shared after that.
    """

    __slots__ = ("opcode", "payload", "frame", "_deflated", "offset", "stream_prefix", "_v1")

    def __init__(self, opcode: int, payload: bytes) -> None:
        """A message of ``opcode`` (text or binary) carrying ``payload``."""
        self.opcode = opcode
        self.payload = payload
        self.frame = encode_frame(opcode, payload)
        self._deflated: dict[int, bytes] | None = None
        #: Its offset in its stream (0: not a message of a stream that keeps history).
        self.offset = 0
        self.stream_prefix = b""
        self._v1: Outgoing | None = None

    @classmethod
    def of(cls, message: str | bytes | bytearray | memoryview) -> Outgoing:
        """The message for ``str`` (text) or bytes-like (binary) ``message``."""
        return cls(*message_payload(message))

    @classmethod
    def json(cls, obj: Any) -> Outgoing:
        """A text message carrying ``obj`` serialised as JSON."""
        return cls(OP_TEXT, json.dumps(obj).encode("utf-8"))

    def frame_for(self, deflate: PerMessageDeflate | None) -> bytes:
        """The frame to send to a connection whose permessage-deflate parameters are ``deflate``."""
        if deflate is None:
            return self.frame
        bits = deflate.server_max_window_bits
        cache = self._deflated
        if cache is None:
            cache = self._deflated = {}
        frame = cache.get(bits)
        if frame is None:
            frame = cache[bits] = compressed_frame(self.opcode, self.payload, deflate)
        return frame

    def in_stream(self, prefix: bytes, offset: int) -> None:
        """Make this message number ``offset`` of the stream whose envelope prefix is ``prefix``."""
        self.offset = offset
        self.stream_prefix = prefix
        self._v1 = None

    def v1_frame_for(self, deflate: PerMessageDeflate | None) -> bytes:
        """The frame to send to an ``asok-green.v1`` connection: the message in its envelope."""
        v1 = self._v1
        if v1 is None:
            if self.offset:
                text = envelopes.stream_envelope(self.stream_prefix, self.offset, self.opcode, self.payload)
            else:
                text = envelopes.plain_envelope(self.opcode, self.payload)
            v1 = self._v1 = Outgoing(OP_TEXT, text)
        return v1.frame_for(deflate)


class TokenBucket:
    """``rate`` events a second on average, ``burst`` at once: the message-rate limit."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        """A full bucket at time ``now``."""
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    @classmethod
    def for_limits(cls, limits: Any) -> TokenBucket | None:
        """The bucket ``limits`` ask for, or None when messages are not rate-limited."""
        rate = limits.max_messages_per_second
        if rate <= 0:
            return None
        return cls(rate, limits.message_burst or max(1.0, rate), monotonic())

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def nonblocking_send(sock: socket.socket) -> Callable[[bytes], int]:
    """A ``send`` for ``sock`` that never waits: it raises BlockingIOError instead.

    For a plain gevent socket that is the kernel socket's own ``send`` (one
    syscall, no greenlet switch); for anything else, gevent's ``send`` with a
    zero timeout.
    """
    if type(sock) is gevent.socket.socket:
        return sock._sock.send
    return functools.partial(sock.send, flags=0, timeout=0.0)


class Connection:
    """One WebSocket client, as handlers see it.

    Attributes of the Asok contract: ``user`` (the logged-in User model instance or
    None), ``session``, ``params`` (the ``[param]`` captures of the route), ``path``,
    ``headers`` (the handshake's headers, lower-case keys) and ``addr``
    (``(ip, port)``). Handlers may set attributes of their own on it.
    """

    __slots__ = (
        "server",
        "path",
        "params",
        "headers",
        "addr",
        "user",
        "session",
        "login_sid",
        "deflate",
        "state",
        "last_seen",
        "close_code",
        "close_reason",
        "_sock",
        "_try_send",
        "_reader",
        "_inflater",
        "_leftover",
        "_pending",
        "_pending_bytes",
        "_writer",
        "_closer",
        "_room_set",
        "_live",
        "_rate",
        "_own_socket",
        "_watcher",
        "_on_message",
        "_on_end",
        "__dict__",
        "__weakref__",
    )

    #: False: this client gets today's frames, unwrapped (see :class:`V1Connection`).
    speaks_v1 = False

    def __init__(
        self,
        server: WebSocketServer,
        sock: socket.socket,
        addr: tuple,
        path: str,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        user: Any = None,
        session: Any = None,
        leftover: bytes = b"",
        login_sid: str | None = None,
        deflate: PerMessageDeflate | None = None,
        own_socket: bool = False,
    ):
        """Wrap an upgraded socket; ``leftover`` is data the client sent right after its handshake.

        ``deflate`` holds the permessage-deflate parameters agreed in the
        handshake, or None when the connection is not compressed. With
        ``own_socket`` the connection closes ``sock`` when it finishes (a plain
        gevent socket can then be served by :meth:`watch`).
        """
        self.server = server
        self.path = path
        self.params = params or {}
        self.headers = headers
        self.addr = addr
        self.user = user
        self.session = session
        self.login_sid = login_sid
        self.state = OPEN
        self.last_seen = monotonic()
        self.close_code: int | None = None
        self.close_reason = ""
        self._sock = sock
        self._try_send = nonblocking_send(sock)
        self.deflate = deflate
        # Made when the client sends something, dropped once it holds nothing (see _parser).
        self._reader: MessageReader | None = None
        self._inflater: Inflater | None = None
        self._leftover = leftover
        self._pending: deque | None = None
        self._pending_bytes = 0
        self._writer: gevent.Greenlet | None = None
        self._closer: gevent.Greenlet | None = None
        self._room_set: set | None = None
        self._live: dict | None = None
        self._rate = TokenBucket.for_limits(server.limits)
        self._own_socket = own_socket
        self._watcher: Any = None
        self._on_message: Callable | None = None
        self._on_end: Callable[[], None] | None = None

    # -- what handlers call ------------------------------------------------

    def send(self, message: str | bytes) -> bool:
        """Send a text message (``str``) or a binary one (bytes). False once closing."""
        if self.deflate is None:
            return self._send_counted(encode_message(message))
        return self._send_counted(compressed_frame(*message_payload(message), self.deflate))

    def send_json(self, obj: Any) -> bool:
        """Send ``obj`` serialised as JSON in a text message."""
        payload = json.dumps(obj).encode("utf-8")
        if self.deflate is None:
            return self._send_counted(encode_frame(OP_TEXT, payload))
        return self._send_counted(compressed_frame(OP_TEXT, payload, self.deflate))

    def _send_counted(self, frame: bytes) -> bool:
        """:meth:`send_frame`, counted in the server's stats (broadcasts count theirs once each)."""
        if not self.send_frame(frame):
            return False
        stats = self.server.stats
        stats["messages_sent"] += 1
        stats["bytes_sent"] += len(frame)
        return True

    def close(self, code: int = CLOSE_NORMAL, reason: str = "", *, timeout: float | None = None) -> None:
        """Start the closing handshake: queued messages go first, then the close frame.

        The socket is dropped when the client answers, or after ``timeout``
        seconds (default: the server's ``close_timeout``) if it never does.
        """
        if self.state is not OPEN:
            return
        self.state = CLOSING
        self.close_code, self.close_reason = code, reason
        self._enqueue(encode_frame(OP_CLOSE, encode_close(code, reason)))
        wait = self.server.limits.close_timeout if timeout is None else timeout
        self._closer = gevent.spawn_later(wait, self.abort)

    def join(self, room: str) -> bool:
        """Join ``room`` if its name is valid and the room authorizer allows it."""
        return self.server.join_room(self, room)

    def leave(self, room: str) -> None:
        """Leave ``room`` (no-op if not a member)."""
        self.server.leave_room(self, room)

    @property
    def rooms(self) -> frozenset:
        """The rooms this connection has joined."""
        return frozenset(self._room_set or ())

    @property
    def closed(self) -> bool:
        """True once the closing handshake has started."""
        return self.state is not OPEN

    @property
    def sock(self) -> socket.socket:
        """The connection's socket, as Asok's ``conn.sock``: for its address and options, not for writing.

        Bytes written to it directly would cut into frames queued by :meth:`send`.
        """
        return self._sock

    @functools.cached_property
    def request(self) -> Any:
        """An Asok ``Request`` made from the handshake, as Asok's ``conn.request`` (GraphQL's authorize hook reads it).

        Built on first use (and kept, in the instance's ``__dict__``), so a
        connection nobody asks costs nothing more: its headers and cookies,
        ``REMOTE_ADDR`` (``conn.addr``), and ``request.user`` /
        ``request.session`` as the handshake resolved them. Reading the user
        never queries the database again. Handlers may set it as in Asok.
        """
        from .handshake_request import handshake_request

        return handshake_request(self)

    @property
    def _rooms(self) -> set:
        # Asok's live-component helpers read ``conn._rooms`` directly.
        if self._room_set is None:
            self._room_set = set()
        return self._room_set

    @property
    def _live_comps(self) -> dict:
        # Asok's live-component helpers keep their per-connection state here.
        if self._live is None:
            self._live = {}
        return self._live

    # -- outbound ------------------------------------------------------------

    def send_frame(self, frame: bytes) -> bool:
        """Send one already-encoded frame without ever blocking the caller.

        This is the path of every broadcast: the frame is built once and handed
        to each recipient. False if the connection is closing or gone.
        """
        if self.state is not OPEN:
            return False
        return self._enqueue(frame)

    def _enqueue(self, frame: bytes) -> bool:
        pending = self._pending
        if self._writer is None and not pending:
            # Nothing queued and nobody writing: the frame may go straight out.
            try:
                sent = self._try_send(frame)
            except (BlockingIOError, ssl.SSLWantWriteError):
                sent = 0
            except OSError:
                self.abort()
                return False
            if sent == len(frame):
                return True
            if sent:
                # The rest of a frame the kernel took in part: it must go next, whole.
                frame = memoryview(frame)[sent:]
        if pending is None:
            pending = self._pending = deque()
        pending.append(frame)
        self._pending_bytes += len(frame) + _QUEUE_ENTRY_COST
        if self._pending_bytes > self.server.limits.max_queue and self.state is OPEN:
            self._close_slow_consumer()
        if self._writer is None:
            self._writer = gevent.spawn(self._drain)
        return True

    def cork_frame(self, frame: bytes, corked: list) -> bool:
        """Queue one frame of a broadcast to go out at the end of this loop turn, with the others.

        Several broadcasts handled in one turn then reach each client in one
        send instead of one send each. A connection added to ``corked`` (the
        first time it holds a frame back) must get :meth:`uncork` before the
        loop waits again. False if the connection is closing or gone.
        """
        if self.state is not OPEN:
            return False
        pending = self._pending
        if self._writer is not None:
            return self._enqueue(frame)  # a writer is busy: it takes this frame in order
        if pending is None:
            pending = self._pending = deque()
        if not pending:
            corked.append(self)
        pending.append(frame)
        self._pending_bytes += len(frame) + _QUEUE_ENTRY_COST
        if self._pending_bytes > self.server.limits.max_queue:
            self._close_slow_consumer()
        return True

    def uncork(self) -> None:
        """Send what :meth:`cork_frame` held back, in one send; a writer takes any rest."""
        pending = self._pending
        if self._writer is not None or not pending:
            return
        if self.state is CLOSED:
            self._pending = None
            self._pending_bytes = 0
            return
        chunk = pending.popleft() if len(pending) == 1 else b"".join(pending)
        self._pending = None  # a quiet connection keeps no queue
        self._pending_bytes = 0
        try:
            sent = self._try_send(chunk)
        except (BlockingIOError, ssl.SSLWantWriteError):
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(chunk):
            rest = memoryview(chunk)[sent:]
            self._pending = deque((rest,))
            self._pending_bytes = len(rest) + _QUEUE_ENTRY_COST
            self._writer = gevent.spawn(self._drain)

    def _answer_ping(self, payload: bytes) -> None:
        """Queue the pong for a ping; a pong still waiting in the queue is replaced, not added to."""
        pong = encode_frame(OP_PONG, payload)
        pending = self._pending
        if pending:
            last = pending[-1]
            # Only a whole frame (bytes) can be a waiting pong: a partly written one is a memoryview.
            if type(last) is bytes and last[0] == _PONG_HEAD:
                pending[-1] = pong
                self._pending_bytes += len(pong) - len(last)
                return
        self._enqueue(pong)

    def _close_slow_consumer(self) -> None:
        """Drop what is queued, keep only the close frame: the client is not reading.

        A frame the kernel took in part (the queue's head, then a memoryview)
        stays, so the client still gets whole frames, then the close frame.
        A frame the writer is sending is not in the queue any more.
        """
        pending = self._pending
        queued = self._pending_bytes
        self.server.stats["slow_consumers_closed"] += 1
        limits = self.server.limits
        log_limited(
            logger,
            logging.WARNING,
            "slow consumer",
            limits,
            "closing slow consumer %s on %s: %d bytes queued (limit %d)",
            self.addr,
            self.path,
            queued,
            limits.max_queue,
            extra=conn_fields(self, "slow_consumer", close_code=CLOSE_POLICY, cause="queue", queued_bytes=queued),
        )
        head = pending[0] if pending and type(pending[0]) is memoryview else None
        pending.clear()
        self._pending_bytes = 0
        if head is not None:
            pending.append(head)
            self._pending_bytes = len(head) + _QUEUE_ENTRY_COST
        self.close(CLOSE_POLICY, "send queue over limit: client too slow")

    def _drain(self) -> None:
        pending = self._pending
        try:
            while pending:
                chunk = pending.popleft()
                cost = len(chunk) + _QUEUE_ENTRY_COST
                if pending and len(chunk) < _COALESCE_LIMIT:
                    parts = [chunk]
                    size = len(chunk)
                    while pending and size < _COALESCE_LIMIT:
                        part = pending.popleft()
                        parts.append(part)
                        size += len(part)
                    chunk = b"".join(parts)
                    cost = size + _QUEUE_ENTRY_COST * len(parts)
                self._sock.sendall(chunk)  # yields while the client's window is full
                self._pending_bytes -= cost
        except OSError:
            pending.clear()
            self._pending_bytes = 0
            self.abort()
        finally:
            self._writer = None
            if self._pending is pending and not pending:
                self._pending = None  # a quiet connection keeps no queue

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued frames to reach the kernel."""
        self.uncork()
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
        return self._writer is None

    def abort(self) -> None:
        """Drop the TCP connection now; the reading greenlet sees end of stream."""
        if self.state is OPEN:
            self.close_code = CLOSE_ABNORMAL
        self.state = CLOSED
        sock = self._sock
        # A plain gevent socket is shut down in the kernel: gevent's shutdown would
        # also cancel waits on the read watcher, whose callback is this
        # connection's (not a greenlet) while it is idle. Whoever waits still
        # wakes up, as the socket turns readable and writable.
        raw = sock._sock if type(sock) is gevent.socket.socket else sock
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- inbound -----------------------------------------------------------------

    def run(self, on_message: Callable | None) -> None:
        """Read until the connection ends, dispatching each message to ``on_message``."""
        recv = self._sock.recv
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

    @property
    def can_watch(self) -> bool:
        """True if :meth:`watch` can serve this connection: it owns a plain gevent socket."""
        return self._own_socket and type(self._sock) is gevent.socket.socket

    def watch(self, on_message: Callable | None, on_end: Callable[[], None]) -> None:
        """Serve reads from the socket's read watcher: no greenlet of its own while idle.

        Returns at once. ``on_end`` runs (in a reader greenlet) when the
        connection ends, and must call :meth:`finish`.
        """
        self._on_message, self._on_end = on_message, on_end
        self._watcher = self._sock._read_event  # unused otherwise: nothing else waits to read this socket
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
        sock = self._sock._sock
        try:
            head = sock.recv(_PARSE_SLICE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        reader = self._reader
        if head and self.state is not CLOSED and (reader is None or not (reader.partial or reader.done)):
            size = len(head)
            if control_frames_length(head, pings=False) == size:
                self._read_control(sock, size, pings=False)
                return
            # A ping is answered here only when its pong can go straight out (nothing queued).
            if not self._pending and self._writer is None and control_frames_length(head) == size:
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
        recv = self._sock._sock.recv  # the kernel socket: never waits
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
        try:
            with gevent.Timeout(seconds, False):
                gevent.get_hub().wait(self._watcher)
                return True
        except OSError:
            return True  # the socket was closed meanwhile: the next read says so
        finally:
            LINGERING.give()
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
                    self._answer_ping(event.payload)
            elif kind is Close:
                self._peer_closed(event)
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
            elapsed = monotonic() - started
            server = self.server
            server.handler_seconds[handler] += elapsed
            server.handler_calls[handler] += 1
            if server.metrics is not None:
                server.metrics.handled(handler, elapsed)
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

    def _peer_closed(self, event: Close) -> None:
        if self.state is OPEN:
            # Echo the client's code, as RFC 6455 section 5.5.1 asks.
            self.state = CLOSING
            self.close_code, self.close_reason = event.code, event.reason
            payload = b"" if event.code is None else encode_close(event.code)
            self._enqueue(encode_frame(OP_CLOSE, payload))

    def finish(self, flush_timeout: float) -> None:
        """At the end: flush what is queued (bounded), then release the socket (closed if owned)."""
        if self.state is not CLOSED:
            self.flush(flush_timeout)
        self.state = CLOSED
        if self._closer is not None:
            self._closer.kill(block=False)
            self._closer = None
        writer = self._writer
        if writer is not None:
            writer.kill(block=False)
        self._pending = None
        self._pending_bytes = 0
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._own_socket:
            self._release_socket()

    def _release_socket(self) -> None:
        """Close the socket this connection owns."""
        sock = self._sock
        try:
            # As pywsgi does before closing: unread input would turn the close into a reset.
            sock._sock.recv(16384)
        except OSError:
            pass
        sock.close()

    def going_away(self, reason: str = "server shutting down") -> None:
        """Close with 1001, as the server does when it stops."""
        self.close(CLOSE_GOING_AWAY, reason)

    def __repr__(self) -> str:
        user = getattr(self.user, "id", None)
        return f"<Connection {self.path} from {self.addr} user={user} {self.state}>"


class V1Connection(Connection):
    """A client that speaks ``asok-green.v1``: every app frame it gets is a JSON envelope.

    ``send`` and ``send_json`` wrap the message (``{"d": text}`` or
    ``{"b": base64}``); broadcasts use their shared v1 frame
    (:meth:`Outgoing.v1_frame_for`). ``since`` is the position the client
    resumes its path stream from (``?asok_since=``), or None.
    """

    __slots__ = ("since",)

    speaks_v1 = True

    def __init__(self, *args: Any, since: envelopes.Since | None = None, **kwargs: Any) -> None:
        """As :class:`Connection`, with the path stream position to resume from."""
        super().__init__(*args, **kwargs)
        self.since = since

    def send(self, message: str | bytes) -> bool:
        """Send a text message (``str``) or a binary one (bytes), in its envelope. False once closing."""
        return self.send_text(envelopes.plain_envelope(*message_payload(message)))

    def send_json(self, obj: Any) -> bool:
        """Send ``obj`` serialised as JSON, in its envelope."""
        return self.send_text(envelopes.plain_envelope(OP_TEXT, json.dumps(obj).encode("utf-8")))

    def send_text(self, text: bytes) -> bool:
        """Send ``text`` (UTF-8 JSON) as one text frame, as it is: envelopes and the server's notices."""
        if self.deflate is None:
            return self._send_counted(encode_frame(OP_TEXT, text))
        return self._send_counted(compressed_frame(OP_TEXT, text, self.deflate))
