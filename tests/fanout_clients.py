"""Many WebSocket clients in one chat room, on plain sockets and one selector, in one process.

    python -m tests.fanout_clients --port P --path /chat/room --clients 1000 --broadcasts 200 [--stuck]

The first client sends each message; the server's chat handler broadcasts it
to the whole room. The next message goes out once every reading client has the
previous one, and the time that took is the message's delivery time. With
``--stuck`` one more client (counted in ``--clients``) connects with a tiny
receive buffer and reads nothing until every reader has every message; then it
reads whatever the server sent it: up to a close frame, or every message if it
was never closed. A message that does not reach every reader within
``--timeout`` seconds ends the run with an error. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import struct
import sys
import time

PREFIX = b"Guest: "


def handshake(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """A connected, upgraded, blocking socket."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the head may be consumed here
        if not chunk:
            raise ConnectionError(f"closed during handshake: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head!r}")
    return sock


def masked_text(payload: bytes) -> bytes:
    """A masked, final text frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    mask = os.urandom(4)
    key = int.from_bytes(mask * (n // 4) + mask[: n % 4], "little")
    body = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
    return header + mask + body


def split_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove the complete frames at the start of ``buf``: ``(opcode, first 32 payload bytes)``."""
    frames = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        n = buf[pos + 1] & 0x7F
        offset = 2
        if n == 126:
            if end - pos < 4:
                break
            (n,) = struct.unpack_from("!H", buf, pos + 2)
            offset = 4
        elif n == 127:
            if end - pos < 10:
                break
            (n,) = struct.unpack_from("!Q", buf, pos + 2)
            offset = 10
        if end - pos < offset + n:
            break
        start = pos + offset
        frames.append((buf[pos] & 0x0F, bytes(buf[start : start + min(n, 32)])))
        pos = start + n
    del buf[:pos]
    return frames


def message_number(head: bytes) -> int | None:
    """The number of a chat message ``Guest: <n>:...``, or None for other messages."""
    if not head.startswith(PREFIX):
        return None
    number, sep, _ = head[len(PREFIX) :].partition(b":")
    return int(number) if sep else None


class Reader:
    """One reading client: what it has received so far."""

    __slots__ = ("sock", "buf", "last", "count", "closed")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.last = -1
        self.count = 0
        self.closed = False

    def on_data(self, data: bytes) -> None:
        """Take bytes from the socket; count the chat messages they complete, which must come in order."""
        self.buf += data
        for opcode, head in split_frames(self.buf):
            if opcode == 0x8:
                self.closed = True
            elif opcode == 0x1:
                number = message_number(head)
                if number is not None:
                    if number != self.last + 1:
                        raise AssertionError(f"message {number} after {self.last}")
                    self.last = number
                    self.count += 1


def drain_stuck(sock: socket.socket, timeout: float, total: int) -> dict:
    """Read everything the stuck client was sent; its close code, and how many messages it got.

    Reading stops at the close frame, at the end of the stream, or once all
    ``total`` messages are in (a client that was never closed gets no more).
    """
    reader = Reader(sock)
    code = None
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        buf += data
        for opcode, head in split_frames(buf):
            if opcode == 0x8:
                code = struct.unpack("!H", head[:2])[0] if len(head) >= 2 else None
                deadline = 0  # done: the close frame is the last thing the server sends
            elif opcode == 0x1 and message_number(head) is not None:
                reader.count += 1
                if reader.count == total:
                    deadline = 0
    return {"close_code": code, "messages": reader.count}


def run(args: argparse.Namespace) -> dict:
    """Connect every client, send the messages one after another, and report what happened."""
    started = time.monotonic()
    readers = [Reader(handshake(args.port, args.path)) for _ in range(args.clients - (1 if args.stuck else 0))]
    stuck = handshake(args.port, args.path, rcvbuf=4096) if args.stuck else None
    connect_seconds = time.monotonic() - started
    selector = selectors.DefaultSelector()
    for reader in readers:
        reader.sock.setblocking(False)
        selector.register(reader.sock, selectors.EVENT_READ, reader)
    sender = readers[0].sock
    padding = b"x" * args.size
    delivery = []
    total = args.warmup + args.broadcasts
    for number in range(total):
        frame = masked_text(b"%d:" % number + padding)
        t0 = time.perf_counter()
        view = memoryview(frame)
        while view:  # the sender's socket is non-blocking: finish the frame, reading meanwhile
            try:
                view = view[sender.send(view) :]
            except BlockingIOError:
                time.sleep(0.0005)
        waiting = len(readers)
        deadline = time.monotonic() + args.timeout
        while waiting:
            if time.monotonic() > deadline:
                behind = sum(r.last < number for r in readers)
                raise SystemExit(json.dumps({"error": f"message {number}: {behind} clients never got it"}))
            for key, _ in selector.select(1.0):
                reader = key.data
                before = reader.last
                try:
                    data = reader.sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                if not data:
                    raise SystemExit(json.dumps({"error": "a reading client was disconnected"}))
                reader.on_data(data)
                if before < number <= reader.last:
                    waiting -= 1
        if number >= args.warmup:
            delivery.append(time.perf_counter() - t0)
    result = {
        "connect_seconds": round(connect_seconds, 2),
        "delivery_ms": [round(d * 1000, 3) for d in delivery],
        "readers": len(readers),
        "readers_with_every_message": sum(r.count == total for r in readers),
        "readers_closed": sum(r.closed for r in readers),
    }
    if stuck is not None:
        result["stuck"] = drain_stuck(stuck, args.timeout, total)
    for reader in readers:
        reader.sock.close()
    if stuck is not None:
        stuck.close()
    return result


def main() -> None:
    """Parse the command line, run, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/chat/fanout")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--size", type=int, default=8192, help="bytes of padding in each message")
    parser.add_argument("--stuck", action="store_true", help="make one of the clients never read")
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    json.dump(run(args), sys.stdout)
    print()


if __name__ == "__main__":
    main()
