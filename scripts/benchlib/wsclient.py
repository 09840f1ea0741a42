"""A raw WebSocket client on one plain socket, for clients that must misbehave on purpose.

Each call takes a deadline and gives up when it passes, so a server that stalls
makes a measurement say "timeout" instead of hanging it. Frames are built and
parsed with scripts/loadgen.py's helpers; only loopback addresses are allowed.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time

from .servers import SCRIPTS

if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
from loadgen import (  # noqa: E402
    IP_BIND_ADDRESS_NO_PORT,
    MASK,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    client_frame,
    handshake_request,
    require_loopback,
    split_frames,
)

__all__ = [
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "RawClient",
    "Timeout",
    "client_frame",
    "close_code",
    "continuation_frame",
    "fragment_start",
    "split_frames",
]

OP_CONTINUATION = 0x0


class Timeout(Exception):
    """The server did not answer before the deadline."""


def fragment_start(payload: bytes = b"x") -> bytes:
    """The first frame of a fragmented text message (FIN clear), masked."""
    frame = bytearray(client_frame(OP_TEXT, payload))
    frame[0] &= 0x7F
    return bytes(frame)


def continuation_frame() -> bytes:
    """An empty, non-final continuation frame: 6 bytes on the wire."""
    return struct.pack("!BB", OP_CONTINUATION, 0x80) + MASK


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload (1005 when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


class RawClient:
    """One upgraded connection: ``sock`` is non-blocking once the handshake is done."""

    def __init__(
        self,
        port: int,
        path: str,
        origin: str,
        *,
        host: str = "127.0.0.1",
        source: str | None = None,
        rcvbuf: int = 0,
        timeout: float = 10.0,
    ):
        require_loopback(host)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
        if source:
            require_loopback(source)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.sendall(handshake_request(host, port, path, origin))
            head = bytearray()
            while b"\r\n\r\n" not in head:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("connection closed during the handshake")
                head += data
        except TimeoutError as exc:
            sock.close()
            raise Timeout("handshake") from exc
        except BaseException:
            sock.close()
            raise
        status, _, rest = bytes(head).partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0] + b" ":
            sock.close()
            raise ConnectionError(f"handshake refused: {status.splitlines()[0]!r}")
        sock.setblocking(False)
        self.sock = sock
        self.buf = bytearray(rest)
        self.eof = False

    def send_all(self, data: bytes, deadline: float) -> bool:
        """Write ``data`` whole; False if the deadline passed first."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
                view = view[sent:]
            except BlockingIOError:
                if not self.wait(writable=True, deadline=deadline):
                    return False
        return True

    def wait(self, *, writable: bool = False, deadline: float) -> bool:
        """Wait until the socket is readable (or writable); False at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if writable:
            _, ready, _ = select.select([], [self.sock], [], left)
        else:
            ready, _, _ = select.select([self.sock], [], [], left)
        return bool(ready)

    def read_some(self, deadline: float, size: int = 262144) -> int:
        """Read what has arrived (waiting until the deadline for something); bytes read, 0 at EOF or timeout."""
        while True:
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                if not self.wait(deadline=deadline):
                    return 0
                continue
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return 0
            self.buf += data
            return len(data)

    def frames(self, deadline: float) -> list[tuple[int, bytes]]:
        """The next complete frames (at least one, unless the deadline or EOF comes first)."""
        while True:
            got = split_frames(self.buf)
            if got or self.eof:
                return got
            if not self.read_some(deadline):
                if self.eof:
                    return split_frames(self.buf)
                raise Timeout("no frame before the deadline")

    def close(self, code: int = 1000, reset: bool = False) -> None:
        """Send a close frame (or reset the connection with SO_LINGER 0) and close the socket."""
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.sock.send(client_frame(OP_CLOSE, struct.pack("!H", code)))
        except OSError:
            pass
        self.sock.close()
