"""The writing half of a connection, and its closing handshake.

Writes never block the caller. :meth:`Outbound.send_frame` first tries a
non-blocking write straight to the socket; whatever the kernel does not take
goes on this connection's bounded queue, drained by a writer greenlet that
exists only while there is something to drain. A client whose queue passes
its limit is closed (1008) instead of slowing anyone else down.

The queue's bound (``max_queue``) charges each queued frame its bookkeeping
too, and at most one pong waits in it for a client that does not read (RFC
6455 lets a server answer only the latest ping).
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import gevent.socket

from ..core.log_fields import conn_fields
from ..core.logs import log_limited
from ..protocol.frames import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_CLOSE,
    OP_PONG,
    encode_close,
    encode_frame,
)

__all__ = ["CLOSED", "CLOSING", "OPEN", "Outbound", "linger", "nonblocking_send"]

logger = logging.getLogger("asok_green")

OPEN, CLOSING, CLOSED = "open", "closing", "closed"

#: How many queued bytes one write may coalesce into a single ``send``.
_COALESCE_LIMIT = 64 * 1024

#: Bytes each queued frame is charged on top of its length toward ``max_queue``:
#: its object and its slot in the queue, so that many tiny frames cost what they hold.
_QUEUE_ENTRY_COST = 64

#: Close codes the server sends a client that may still be writing (it broke the protocol, sent
#: too much or too fast): before the socket is closed, its input is drained a little (a lingering
#: close), so the client reads the close frame instead of a reset.
_LINGER_CODES = frozenset({CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_TOO_BIG})
#: Bounds of a lingering close: seconds, and bytes read and dropped (nginx lingers 30 s at most).
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 16 << 20

#: First byte of an unfragmented pong frame, as the server sends it.
_PONG_HEAD = 0x80 | OP_PONG


def nonblocking_send(sock: socket.socket) -> Callable[[bytes], int]:
    """A ``send`` for ``sock`` that never waits: it raises BlockingIOError instead.

    For a plain gevent socket that is the kernel socket's own ``send`` (one
    syscall, no greenlet switch); for anything else, gevent's ``send`` with a
    zero timeout.
    """
    if type(sock) is gevent.socket.socket:
        return sock._sock.send
    return functools.partial(sock.send, flags=0, timeout=0.0)


class Outbound:
    """A connection's socket, its outbound queue and writer, and its state in the closing handshake.

    ``server`` is the hub the connection belongs to (its ``limits`` and
    ``stats``); ``state`` is ``OPEN``, ``CLOSING`` or ``CLOSED``. The reading
    half (:class:`asok_green.server.inbound.Inbound`) and the handler's API
    (:class:`asok_green.server.connection.Connection`) build on it.
    """

    __slots__ = (
        "server",
        "state",
        "close_code",
        "close_reason",
        "_sock",
        "_try_send",
        "_pending",
        "_pending_bytes",
        "_writer",
        "_closer",
        "_own_socket",
    )

    def __init__(self, server: Any, sock: socket.socket, own_socket: bool) -> None:
        """Write to ``sock`` for ``server``'s client; with ``own_socket``, close it at :meth:`finish`."""
        self.server = server
        self.state = OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self._sock = sock
        self._try_send = nonblocking_send(sock)
        self._pending: deque | None = None
        self._pending_bytes = 0
        self._writer: gevent.Greenlet | None = None
        self._closer: gevent.Greenlet | None = None
        self._own_socket = own_socket

    @property
    def closed(self) -> bool:
        """True once the closing handshake has started."""
        return self.state is not OPEN

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting in the outbound queue, each frame charged its bookkeeping too."""
        return self._pending_bytes

    @property
    def sock(self) -> socket.socket:
        """The connection's socket, as Asok's ``conn.sock``: for its address and options, not for writing.

        Bytes written to it directly would cut into frames queued by :meth:`send`.
        """
        return self._sock

    @property
    def writes_straight(self) -> bool:
        """True when nothing is queued and no writer runs: a frame sent now goes straight to the kernel."""
        return not self._pending and self._writer is None

    @property
    def can_watch(self) -> bool:
        """True if :meth:`watch` can serve this connection: it owns a plain gevent socket."""
        return self._own_socket and type(self._sock) is gevent.socket.socket

    # -- the queue and its writer ------------------------------------------------

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

    def answer_ping(self, payload: bytes) -> None:
        """Queue the pong for the client's ping; a pong still waiting in the queue is replaced, not added to."""
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
        """The writer greenlet: send the queue out, a coalesced chunk at a time, until it is empty."""
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

    # -- the closing handshake ---------------------------------------------------

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

    def going_away(self, reason: str = "server shutting down") -> None:
        """Close with 1001, as the server does when it stops."""
        self.close(CLOSE_GOING_AWAY, reason)

    def answer_close(self, code: int | None, reason: str) -> None:
        """The client sent its close frame (``code`` None: it gave none): echo it, unless closing already."""
        if self.state is OPEN:
            # Echo the client's code, as RFC 6455 section 5.5.1 asks.
            self.state = CLOSING
            self.close_code, self.close_reason = code, reason
            payload = b"" if code is None else encode_close(code)
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
        if self._own_socket:
            self._release_socket()

    def _release_socket(self) -> None:
        """Close the socket this connection owns (after a lingering close if the client may still be writing)."""
        sock = self._sock
        if self.close_code in _LINGER_CODES and type(sock) is gevent.socket.socket:
            linger(sock)
        try:
            # As pywsgi does before closing: unread input would turn the close into a reset.
            sock._sock.recv(16384)
        except OSError:
            pass
        sock.close()


def linger(sock: gevent.socket.socket) -> None:
    """Send FIN behind what was written, then read and drop input until the client closes (bounded).

    Closing a socket with unread input makes the kernel answer with a reset,
    which can reach the client before it reads the close frame written just
    before; a client that read it closes its side, and the drain ends.
    """
    try:
        sock._sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    buffer = bytearray(65536)
    left = _LINGER_BYTES
    try:
        with gevent.Timeout(_LINGER_SECONDS, False):
            while left > 0:
                received = sock.recv_into(buffer)
                if not received:
                    break
                left -= received
    except OSError:
        pass
