"""WebSocket load generator: raw non-blocking sockets on one epoll loop per process.

    python scripts/loadgen.py hold       --url ws://127.0.0.1:8000/room --count 5000 [--source 127.0.0.12]
    python scripts/loadgen.py echo       --url ws://127.0.0.1:8000/echo --clients 100 --seconds 5
    python scripts/loadgen.py handshakes --url ws://127.0.0.1:8000/room --count 3000 --concurrency 32
    python scripts/loadgen.py shootout   --url ws://127.0.0.1:8000/shootout --count 1000

Every mode prints JSON lines on stdout and stops by itself (``--max-seconds``).

``hold`` opens ``--count`` connections (at most ``--concurrency`` handshakes in
flight), prints ``{"event": "opened", ...}`` and then keeps them idle, answering
pings, until stdin closes, ``{"cmd": "close"}`` arrives, or time runs out. It
reads commands from stdin, one JSON object a line:

* ``{"cmd": "expect", "round": R, "messages": M}``: answered at once with
  ``{"event": "armed", "round": R}``; once every open connection has received M
  data messages since, it prints ``{"event": "received", "round": R,
  "t_last": <time.monotonic() of the last one>, "complete": C, "open": O}``.
* ``{"cmd": "open", "count": N}``: open N more connections, then print another
  ``{"event": "opened", ...}`` for that batch.
* ``{"cmd": "say", "text": T, "spread": S}``: every open connection sends one
  text message T, the sends spread evenly over S seconds (0: all at once); then
  ``{"event": "said", "sent": N}``.
* ``{"cmd": "status"}``: ``{"event": "status", "open": O, "complete": C, "pings": P, ...}``
  (P: pings answered since the process started).
* ``{"cmd": "close"}``: close every connection, print ``{"event": "closed"}``, exit.

``shootout`` holds connections like ``hold`` and, on the command ``rounds``,
times broadcast round trips (see :class:`Shootout`).

``echo`` opens ``--clients`` connections, then each sends a message and sends the
next one when the echo comes back, for ``--seconds``; it prints the count.
``handshakes`` opens, upgrades and closes ``--count`` connections and prints how
many completed per second.

Connections bind the ``--source`` address (any of 127.0.0.0/8) with
IP_BIND_ADDRESS_NO_PORT, so each source address has its own ~28,000 ephemeral
ports per server port. Traffic goes only to loopback: other hosts are refused.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import random
import resource
import select
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"
MAX_HEADER = 16384

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA

CONNECTING, UPGRADING, OPEN, CLOSED = 0, 1, 2, 3

_EPOLLIN, _EPOLLOUT, _EPOLLERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR | select.EPOLLHUP


# -- the client side of RFC 6455, just what load needs -------------------------


def handshake_request(host: str, port: int, path: str, origin: str | None = None, cookie: str | None = None) -> bytes:
    """The upgrade request a browser would send (one fixed key: servers need not care)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {HANDSHAKE_KEY}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin or f'http://{host}:{port}'}",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_frame(opcode: int, payload: bytes, mask: bytes = MASK) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = int.from_bytes(mask * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1) if n else 0
    masked = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little") if n else b""
    return header + mask + masked


def split_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove every complete (unmasked server) frame from ``buf``; return (opcode, payload) pairs."""
    frames = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if end - pos < 4:
                break
            n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
        elif n == 127:
            if end - pos < 10:
                break
            n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
        if b1 & 0x80:
            head += 4  # a masked server frame is a protocol error; skip the key all the same
        if end - pos < head + n:
            break
        frames.append((b0 & 0x0F, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    if pos:
        del buf[:pos]
    return frames


def parse_ws_url(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path`` -> (host, port, path); refuses anything but loopback."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise SystemExit(f"loadgen: need a ws:// URL, not {url!r}")
    require_loopback(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def require_loopback(host: str) -> None:
    """Exit unless ``host`` is in 127.0.0.0/8: load goes to this machine only."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise SystemExit(f"loadgen: refusing to send load to {host}: loopback addresses only")


def emit(event: str, **fields) -> None:
    """Print one JSON event line."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


# -- one epoll loop, many sockets -----------------------------------------------


class Client:
    """One connection's state; the loop owns its socket."""

    __slots__ = ("sock", "fd", "state", "inbuf", "outbuf", "received", "started")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.inbuf = bytearray()
        self.outbuf = b""
        self.received = 0
        self.started = time.monotonic()


class Loop:
    """Opens WebSocket connections and runs them; subclasses say what to do with messages."""

    def __init__(self, args: argparse.Namespace):
        self.host, self.port, self.path = parse_ws_url(args.url)
        self.source = args.source
        if self.source:
            require_loopback(self.source)
        self.request = handshake_request(self.host, self.port, self.path, args.origin, args.cookie)
        self.origin, self.cookie = args.origin, args.cookie
        #: With ``--paths-from N``, connection k opens ``<PATH>/<N + k>``, a path of its own.
        self.next_path = getattr(args, "paths_from", None)
        self.deadline = time.monotonic() + args.max_seconds
        self.open_timeout = args.open_timeout
        self.stall_timeout = args.stall_timeout
        self.epoll = select.epoll()
        self.clients: dict[int, Client] = {}
        self.n_open = 0
        self.in_flight = 0
        self.failed = 0
        self.lost = 0
        self.errors: dict[str, int] = {}
        self.next_expiry_check = 0.0
        self.pings = 0

    # connection life -----------------------------------------------------------

    def start_connection(self) -> None:
        """Begin one non-blocking connect."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if self.source:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            err = sock.connect_ex((self.host, self.port))
        except OSError as exc:
            sock.close()
            self.fail(errno.errorcode.get(exc.errno, str(exc)))
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.fail(errno.errorcode.get(err, str(err)))
            return
        client = Client(sock)
        self.clients[client.fd] = client
        self.in_flight += 1
        self.epoll.register(client.fd, _EPOLLOUT)

    def fail(self, reason: str) -> None:
        """Count a connection that never opened."""
        self.failed += 1
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def drop(self, client: Client, reason: str | None = None) -> None:
        """Forget a connection (counted as failed before it opened, as lost after)."""
        if client.state == CLOSED:
            return
        was = client.state
        client.state = CLOSED
        self.clients.pop(client.fd, None)
        try:
            self.epoll.unregister(client.fd)
        except OSError:
            pass
        client.sock.close()
        if was == OPEN:
            self.n_open -= 1
            self.lost += 1
            self.on_lost(client)
        else:
            self.in_flight -= 1
            self.fail(reason or "closed during handshake")

    def close_all(self) -> None:
        """Close every connection (TCP close; the server sees end of stream)."""
        for client in list(self.clients.values()):
            client.state = CLOSED
            client.sock.close()
        self.clients.clear()
        self.n_open = 0

    def send(self, client: Client, data: bytes) -> None:
        """Queue ``data`` for ``client``; written at once when the kernel takes it."""
        if client.outbuf:
            client.outbuf += data
            return
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.drop(client, "send failed")
            return
        if sent < len(data):
            client.outbuf = data[sent:]
            self.epoll.modify(client.fd, _EPOLLIN | _EPOLLOUT)

    # events --------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds and handle whatever is ready."""
        try:
            ready = self.epoll.poll(timeout, 4096)
        except InterruptedError:
            return
        clients = self.clients
        for fd, mask in ready:
            client = clients.get(fd)
            if client is None:
                self.on_other_fd(fd)
                continue
            state = client.state
            if state == OPEN and mask & _EPOLLIN:
                self.read_open(client)
            elif state == CONNECTING:
                self.on_connected(client, mask)
            elif state == UPGRADING:
                self.read_upgrade(client)
            if client.state != CLOSED and mask & _EPOLLOUT and client.outbuf:
                self.flush(client)
            elif client.state != CLOSED and mask & _EPOLLERR and not mask & _EPOLLIN:
                self.drop(client, "socket error")

    def on_connected(self, client: Client, mask: int) -> None:
        err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.drop(client, errno.errorcode.get(err, str(err)))
            return
        client.state = UPGRADING
        self.epoll.modify(client.fd, _EPOLLIN)
        if self.next_path is None:
            self.send(client, self.request)
        else:
            path, self.next_path = f"{self.path}/{self.next_path}", self.next_path + 1
            self.send(client, handshake_request(self.host, self.port, path, self.origin, self.cookie))

    def read_upgrade(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.drop(client, errno.errorcode.get(exc.errno, "recv failed"))
            return
        if not data:
            self.drop(client, "closed during handshake")
            return
        client.inbuf += data
        end = client.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(client.inbuf) > MAX_HEADER:
                self.drop(client, "handshake answer too long")
            return
        status = bytes(client.inbuf[: client.inbuf.find(b"\r\n")]).decode("latin-1")
        if " 101 " not in status + " ":
            code = status.split(" ")[1] if " " in status else status
            self.drop(client, f"HTTP {code}")
            return
        del client.inbuf[: end + 4]
        client.state = OPEN
        self.in_flight -= 1
        self.n_open += 1
        self.on_open(client)
        if client.inbuf and client.state == OPEN:
            self.handle_frames(client)

    def read_open(self, client: Client) -> None:
        try:
            data = client.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            self.drop(client)
            return
        if not data:
            self.drop(client)
            return
        client.inbuf += data
        self.handle_frames(client)

    def handle_frames(self, client: Client) -> None:
        for opcode, payload in split_frames(client.inbuf):
            if opcode == OP_TEXT or opcode == OP_BINARY:
                self.on_message(client, payload)
            elif opcode == OP_PING:
                self.pings += 1
                self.send(client, client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.send(client, client_frame(OP_CLOSE, payload[:2]))
                self.drop(client)
                return
            if client.state == CLOSED:
                return

    def flush(self, client: Client) -> None:
        data, client.outbuf = client.outbuf, b""
        self.epoll.modify(client.fd, _EPOLLIN)
        self.send(client, data)

    def open_many(self, count: int, concurrency: int) -> float:
        """Open ``count`` connections, ``concurrency`` handshakes at a time; return seconds taken.

        Gives up at ``--open-timeout``, or when no handshake has finished for ``--stall-timeout`` seconds.
        """
        started = time.monotonic()
        give_up = min(started + self.open_timeout, self.deadline)
        begun = 0
        settled, last_progress = 0, started
        while time.monotonic() < give_up:
            while begun < count and self.in_flight < concurrency:
                self.start_connection()
                begun += 1
            if begun >= count and self.in_flight == 0:
                break
            self.poll(0.05)
            self.expire_handshakes()
            now = time.monotonic()
            if self.n_open + self.failed != settled:
                settled, last_progress = self.n_open + self.failed, now
            elif now - last_progress > self.stall_timeout:
                break
        for client in [c for c in self.clients.values() if c.state in (CONNECTING, UPGRADING)]:
            self.drop(client, "handshake timed out")
        if begun < count:
            self.errors["not attempted: server stalled"] = count - begun
            self.failed += count - begun
        return time.monotonic() - started

    def expire_handshakes(self) -> None:
        """Give up on handshakes older than 30 s (a server that never answers); looks every 2 s."""
        now = time.monotonic()
        if not self.in_flight or now < self.next_expiry_check:
            return
        self.next_expiry_check = now + 2.0
        for client in [c for c in self.clients.values() if c.state in (CONNECTING, UPGRADING)]:
            if now - client.started > 30:
                self.drop(client, "handshake timed out")

    # hooks ---------------------------------------------------------------------

    def on_open(self, client: Client) -> None:
        """Called once a connection is upgraded."""

    def on_message(self, client: Client, payload: bytes) -> None:
        """Called for each data message."""
        client.received += 1

    def on_lost(self, client: Client) -> None:
        """Called when an open connection ends."""

    def on_other_fd(self, fd: int) -> None:
        """Called for a ready descriptor that is not a connection (stdin)."""


# -- hold ------------------------------------------------------------------------


class Hold(Loop):
    """Hold idle connections; count broadcast deliveries on command."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.round = None
        self.expected = 0
        self.remaining = 0
        self.complete = 0
        self.t_last = 0.0
        self.stdin_buf = b""
        self.quit = False
        self.concurrency = 32
        self.pending_open = 0
        # A ``say`` under way: the frame, the connections still to send it, and when each is due.
        self.say_frame = b""
        self.say_queue: list[Client] = []
        self.say_started = 0.0
        self.say_gap = 0.0
        self.said = 0

    def run(self, count: int, concurrency: int) -> None:
        self.concurrency = concurrency
        self.open_more(count)
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.epoll.register(stdin, _EPOLLIN)
        while not self.quit and time.monotonic() < self.deadline:
            self.poll(0.01 if self.say_queue else 0.5)
            if self.say_queue:
                self.say_due()
            if self.pending_open:
                count, self.pending_open = self.pending_open, 0
                self.open_more(count)
        self.close_all()
        emit("closed", lost=self.lost)

    def say(self, text: str, spread: float) -> None:
        """Start sending ``text`` once on every open connection, spread over ``spread`` seconds."""
        self.say_frame = client_frame(OP_TEXT, text.encode("utf-8"))
        self.say_queue = [c for c in self.clients.values() if c.state == OPEN]
        self.say_queue.reverse()  # popped from the end: in the order they were opened
        self.say_started = time.monotonic()
        self.say_gap = spread / len(self.say_queue) if self.say_queue else 0.0
        self.said = 0
        if not self.say_queue:
            emit("said", sent=0)

    def say_due(self) -> None:
        """Send the messages of the ``say`` under way that are due by now."""
        queue = self.say_queue
        due = len(queue) if self.say_gap <= 0 else int((time.monotonic() - self.say_started) / self.say_gap) + 1
        while queue and self.said < due:
            client = queue.pop()
            if client.state == OPEN:
                self.send(client, self.say_frame)
            self.said += 1
        if not queue:
            emit("said", sent=self.said)

    def open_more(self, count: int) -> None:
        """Open ``count`` more connections and report this batch."""
        opened, failed, errors = self.n_open, self.failed, dict(self.errors)
        seconds = self.open_many(count, self.concurrency)
        batch_errors = {k: v - errors.get(k, 0) for k, v in self.errors.items() if v != errors.get(k, 0)}
        emit(
            "opened",
            ok=self.n_open - opened,
            failed=self.failed - failed,
            errors=batch_errors,
            open=self.n_open,
            seconds=round(seconds, 3),
        )

    def on_other_fd(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.quit = True
            self.epoll.unregister(fd)
            return
        self.stdin_buf += data
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            if line.strip():
                self.command(json.loads(line))

    def command(self, cmd: dict) -> None:
        what = cmd.get("cmd")
        if what == "expect":
            self.arm(cmd["round"], int(cmd["messages"]))
        elif what == "open":
            self.pending_open += int(cmd["count"])  # opened from the main loop, not from inside a poll
        elif what == "say":
            self.say(str(cmd.get("text", "hello")), float(cmd.get("spread", 0.0)))
        elif what == "status":
            self.status("status")
        elif what == "close":
            self.quit = True

    def arm(self, round_id, messages: int) -> None:
        self.round, self.expected = round_id, messages
        self.remaining = self.n_open
        self.complete = 0
        self.t_last = 0.0
        for client in self.clients.values():
            client.received = 0
        emit("armed", round=round_id, open=self.n_open)
        if not self.remaining:
            self.status("received")

    def status(self, event: str) -> None:
        emit(
            event,
            round=self.round,
            t_last=self.t_last,
            complete=self.complete,
            open=self.n_open,
            lost=self.lost,
            pings=self.pings,
        )

    def on_message(self, client: Client, payload: bytes) -> None:
        client.received += 1
        if self.remaining and client.received == self.expected:
            self.complete += 1
            self.t_last = time.monotonic()
            self.remaining -= 1
            if not self.remaining:
                self.status("received")

    def on_lost(self, client: Client) -> None:
        if self.remaining and client.received < self.expected:
            self.remaining -= 1
            if not self.remaining:
                self.status("received")


# -- shootout --------------------------------------------------------------------


#: While timing round trips, connections that are not waiting for their own broadcast are read this often:
#: a few broadcasts' worth of bytes (far below a socket's buffer) then come in one recv.
SWEEP = 0.05
#: Ready connections read between two looks at the senders, in a sweep.
SWEEP_CHUNK = 256


class Shootout(Hold):
    """Held connections on a broadcast route that time broadcast round trips on command.

    ``{"cmd": "rounds", "seconds": S, "senders": K, "timeout": T}``: for S
    seconds, round after round, K connections picked at random each send
    ``{"type": "broadcast", "payload": {"id": ID, "t": SENT}}``; the server sends
    it to every connection of the route, the sender included, and a sender's
    round trip ends when its own broadcast comes back to it. A round ends when
    all K are back (or after T seconds: the missing ones count as timeouts).
    Then ``{"event": "rtts", "rtts": [ms, ...], "timeouts": N, "rounds": R}``.

    Every connection reads everything the server sends, but only a sender
    looks inside the messages: the others just walk the frame headers (to
    answer pings). Senders waiting for their broadcast are watched on an epoll
    set of their own and read as soon as data arrives; the other connections
    are read in a sweep every SWEEP seconds, so that one ``recv`` takes all
    that arrived since. The server's sends are the same either way (a sweep's
    worth of messages is far below a socket's buffer), and the client process
    stays cheaper than the server it measures.
    """

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.tag = f"{os.getpid()}-"
        self.buffer = bytearray(65536)  # every recv lands here: no allocation per read
        self.waiting: dict[int, tuple[bytes, float]] = {}
        self.senders_epoll = select.epoll()  # the sockets in ``waiting``
        self.rtts: list[float] = []
        self.timeouts = 0
        self.rounds_done = 0
        self.rounds_until = 0.0
        self.round_deadline = 0.0
        self.senders = 1
        self.round_timeout = 5.0
        self.sequence = 0

    def run(self, count: int, concurrency: int) -> None:
        self.concurrency = concurrency
        self.open_more(count)
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.epoll.register(stdin, _EPOLLIN)
        next_sweep = 0.0
        while not self.quit and time.monotonic() < self.deadline:
            if self.rounds_until:
                now = time.monotonic()
                if now >= next_sweep:
                    self.sweep()
                    next_sweep = now + SWEEP
                else:
                    self.poll_senders(next_sweep - now)
                self.next_round(time.monotonic())
            else:
                self.poll(0.5)
            if self.pending_open:
                count, self.pending_open = self.pending_open, 0
                self.open_more(count)
        self.close_all()
        emit("closed", lost=self.lost)

    def command(self, cmd: dict) -> None:
        if cmd.get("cmd") == "rounds":
            self.rtts, self.timeouts, self.rounds_done = [], 0, 0
            self.senders = max(1, int(cmd.get("senders", 1)))
            self.round_timeout = float(cmd.get("timeout", 5.0))
            self.rounds_until = time.monotonic() + float(cmd["seconds"])
            self.start_round(time.monotonic())
        else:
            super().command(cmd)

    def start_round(self, now: float) -> None:
        """K random open connections send a broadcast request stamped with the time."""
        open_clients = [c for c in self.clients.values() if c.state == OPEN]
        if not open_clients:
            return
        self.round_deadline = now + self.round_timeout
        for client in random.sample(open_clients, min(self.senders, len(open_clients))):
            self.sequence += 1
            ident = f"{self.tag}{self.sequence}"
            sent = time.monotonic()
            request = json.dumps({"type": "broadcast", "payload": {"id": ident, "t": sent}})
            self.waiting[client.fd] = (f'"{ident}"'.encode(), sent)
            self.senders_epoll.register(client.fd, _EPOLLIN)
            self.send(client, client_frame(OP_TEXT, request.encode()))

    def next_round(self, now: float) -> None:
        """End the round when every sender is back or its time is up; start the next or report."""
        if self.waiting and now < self.round_deadline:
            return
        self.timeouts += len(self.waiting)
        for fd in list(self.waiting):
            self.stop_waiting(fd)
        self.rounds_done += 1
        if now < self.rounds_until:
            self.start_round(now)
            return
        self.rounds_until = 0.0
        emit("rtts", rtts=self.rtts, timeouts=self.timeouts, rounds=self.rounds_done, open=self.n_open)

    def poll(self, timeout: float, most: int = 4096) -> int:
        """Like :meth:`Loop.poll`, with a short way for the common case: whole text frames for a non-sender.

        Returns how many descriptors were ready (at most ``most``).
        """
        try:
            ready = self.epoll.poll(timeout, most)
        except InterruptedError:
            return 0
        clients, waiting = self.clients, self.waiting
        for fd, mask in ready:
            client = clients.get(fd)
            if client is not None and client.state == OPEN and mask & _EPOLLIN and not client.outbuf:
                self.read_open(client, fd not in waiting)
                continue
            if client is None:
                self.on_other_fd(fd)
            elif client.state == OPEN and mask & _EPOLLIN:
                self.read_open(client)
            elif client.state == CONNECTING:
                self.on_connected(client, mask)
            elif client.state == UPGRADING:
                self.read_upgrade(client)
            if client is not None and client.state != CLOSED and mask & _EPOLLOUT and client.outbuf:
                self.flush(client)
        return len(ready)

    def read_open(self, client: Client, idle: bool = False) -> None:
        buf = self.buffer
        try:
            got = client.sock.recv_into(buf)
        except BlockingIOError:
            return
        except OSError:
            self.drop(client)
            return
        if not got:
            self.drop(client)
            return
        if idle and not client.inbuf:
            # Whole text frames for a connection that is not waiting for its own broadcast: nothing to do.
            pos = 0
            while pos + 2 <= got:
                n = buf[pos + 1]
                if buf[pos] != 0x81 or n > 126:
                    break  # a control frame, a fragment or a large frame: the full path below
                if n == 126:
                    if pos + 4 > got:
                        break
                    n = 2 + (buf[pos + 2] << 8 | buf[pos + 3])
                pos += 2 + n
            if pos == got:
                return
        data = bytes(buf[:got])
        if client.inbuf:
            client.inbuf += data
            data = bytes(client.inbuf)
        mine = self.waiting.get(client.fd)
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, n = data[pos], data[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = (data[pos + 2] << 8) | data[pos + 3], 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + n:
                break
            opcode = b0 & 0x0F
            if opcode >= OP_CLOSE:
                self.control(client, opcode, data[pos + head : pos + head + n])
                if client.state == CLOSED:
                    return
            elif mine is not None and data.find(mine[0], pos + head, pos + head + n) >= 0:
                self.rtts.append((time.monotonic() - mine[1]) * 1000)
                self.stop_waiting(client.fd)
                mine = None
            pos += head + n
        client.inbuf = bytearray(data[pos:]) if pos < end else bytearray()

    def control(self, client: Client, opcode: int, payload: bytes) -> None:
        """Answer a ping; echo a close and drop the connection."""
        if opcode == OP_PING:
            self.send(client, client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.send(client, client_frame(OP_CLOSE, payload[:2]))
            self.drop(client)

    def stop_waiting(self, fd: int) -> None:
        """``fd``'s round trip is over (or its round is): back to the sweeps."""
        del self.waiting[fd]
        try:
            self.senders_epoll.unregister(fd)
        except OSError:
            pass

    def sweep(self) -> None:
        """Read every ready connection, a chunk at a time, the senders' sockets looked at between chunks."""
        while self.poll(0, SWEEP_CHUNK) == SWEEP_CHUNK:
            self.poll_senders(0)

    def poll_senders(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for data on a sender's socket and read it."""
        try:
            ready = self.senders_epoll.poll(timeout)
        except InterruptedError:
            return
        for fd, _ in ready:
            client = self.clients.get(fd)
            if client is not None and client.state == OPEN:
                self.read_open(client)
            elif fd in self.waiting:
                self.stop_waiting(fd)

    def on_lost(self, client: Client) -> None:
        if client.fd in self.waiting:
            self.stop_waiting(client.fd)


# -- echo ------------------------------------------------------------------------


class Echo(Loop):
    """Each client sends a message and sends the next when the echo is back."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.frame = client_frame(OP_TEXT, b"e" * args.size)
        self.counting = False
        self.messages = 0
        self.total = 0

    def run(self, clients: int, seconds: float) -> None:
        self.open_many(clients, min(clients, 64))
        for client in list(self.clients.values()):
            self.send(client, self.frame)
        warm_up = time.monotonic() + 0.5
        while time.monotonic() < warm_up:
            self.poll(0.05)
        self.counting = True
        started = time.monotonic()
        stop = min(started + seconds, self.deadline)
        while time.monotonic() < stop and self.n_open:
            self.poll(0.05)
        elapsed = time.monotonic() - started
        self.close_all()
        emit(
            "echo",
            messages=self.messages,
            total=self.total,
            seconds=round(elapsed, 3),
            rate=self.messages / elapsed if elapsed else 0.0,
            clients=clients,
            failed=self.failed,
            lost=self.lost,
            errors=self.errors,
        )

    def on_message(self, client: Client, payload: bytes) -> None:
        self.total += 1
        if self.counting:
            self.messages += 1
        self.send(client, self.frame)


# -- handshakes ------------------------------------------------------------------


class Handshakes(Loop):
    """Open, upgrade and close connections as fast as the server takes them."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.done = 0
        self.close_frame = client_frame(OP_CLOSE, struct.pack("!H", 1000))

    def run(self, count: int, concurrency: int, seconds: float) -> None:
        self.open_timeout = min(self.open_timeout, seconds)
        elapsed = self.open_many(count, concurrency)
        emit(
            "handshakes",
            ok=self.done,
            failed=self.failed,
            seconds=round(elapsed, 3),
            rate=self.done / elapsed if elapsed else 0.0,
            errors=self.errors,
        )

    def on_open(self, client: Client) -> None:
        self.done += 1
        client.state = CLOSED
        self.n_open -= 1
        self.clients.pop(client.fd, None)
        self.epoll.unregister(client.fd)
        try:
            client.sock.send(self.close_frame)
        except OSError:
            pass
        client.sock.close()


# -- command line ----------------------------------------------------------------


def raise_open_files() -> None:
    """Use the hard limit of open files (connections are files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("hold", "shootout", "echo", "handshakes"):
        mode = modes.add_parser(name)
        mode.add_argument("--url", required=True, help="ws://127.0.0.x:PORT/PATH")
        mode.add_argument("--source", help="source address to bind (127.0.0.x)")
        mode.add_argument("--origin", help="Origin header (default: http://HOST:PORT)")
        mode.add_argument("--cookie", help="Cookie header to send with the handshake")
        mode.add_argument("--open-timeout", type=float, default=120.0, help="seconds allowed for opening")
        mode.add_argument(
            "--stall-timeout", type=float, default=15.0, help="give up opening after this long without progress"
        )
        mode.add_argument("--max-seconds", type=float, default=600.0, help="exit after this long, whatever happens")
    hold = modes.choices["hold"]
    hold.add_argument("--count", type=int, required=True)
    hold.add_argument("--paths-from", type=int, help="connection k opens PATH/<N + k>: a path of its own each")
    hold.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    shootout = modes.choices["shootout"]
    shootout.add_argument("--count", type=int, required=True)
    shootout.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    echo = modes.choices["echo"]
    echo.add_argument("--clients", type=int, default=100)
    echo.add_argument("--seconds", type=float, default=5.0)
    echo.add_argument("--size", type=int, default=64, help="message size in bytes")
    shakes = modes.choices["handshakes"]
    shakes.add_argument("--count", type=int, default=2000)
    shakes.add_argument("--concurrency", type=int, default=32)
    shakes.add_argument("--seconds", type=float, default=10.0, help="stop after this long")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run one mode until it is done."""
    args = parse_args(argv)
    raise_open_files()
    if args.mode == "hold":
        Hold(args).run(args.count, args.concurrency)
    elif args.mode == "shootout":
        Shootout(args).run(args.count, args.concurrency)
    elif args.mode == "echo":
        Echo(args).run(args.clients, args.seconds)
    else:
        Handshakes(args).run(args.count, args.concurrency, args.seconds)


if __name__ == "__main__":
    main()
