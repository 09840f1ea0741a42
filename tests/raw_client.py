"""A WebSocket client on a bare socket, for tests that must misbehave on purpose."""

from __future__ import annotations

import base64
import os
import socket
import time

from tests.server_frames import client_frame, close_code, parse_server_frames

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def handshake_request(path: str, host: str, origin: str | None = None, extra: str = "") -> bytes:
    """A valid upgrade request for ``path``; ``extra`` is raw header lines to add."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


class RawClient:
    """One TCP connection to the server, speaking WebSocket by hand."""

    def __init__(self, port: int, timeout: float = 5):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def upgrade(self, path: str = "/echo", origin: str | None = None, extra: str = "") -> bytes:
        """Send a handshake and return the server's response head."""
        host = f"127.0.0.1:{self.port}"
        self.sock.sendall(handshake_request(path, host, origin or f"http://{host}", extra))
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def send_frame(self, opcode: int, payload: bytes = b"", **kw) -> None:
        """Send one frame (masked unless ``mask=False``)."""
        self.sock.sendall(client_frame(opcode, payload, **kw))

    def frames_until_closed(self, timeout: float = 5) -> list[tuple[int, bytes]]:
        """Every frame the server sends until it closes the TCP connection (or ``timeout``)."""
        frames: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                chunk = b""
            parsed, self.buffer = parse_server_frames(self.buffer + chunk)
            frames.extend(parsed)
            if not chunk:
                return frames
        raise AssertionError(f"server did not close within {timeout}s; got {frames!r}")

    def close_code(self, timeout: float = 5) -> int | None:
        """The code of the close frame the server sends before closing (None if none)."""
        closes = [p for op, p in self.frames_until_closed(timeout) if op == OP_CLOSE]
        return close_code(closes[0]) if closes else None

    def close(self) -> None:
        """Drop the TCP connection."""
        self.sock.close()
