"""Hostile clients: each one abuses a server in one way, bounded in time and in frames.

    python -m benchlib.hostile flood     --port P --path /echo --origin O --seconds 5
    python -m benchlib.hostile fragments --port P --path /echo --origin O --count 2000000
    python -m benchlib.hostile pings     --port P --path /echo --origin O --count 200000
    python -m benchlib.hostile nonreader --port P --path /room --origin O --seconds 60

(run from scripts/). Every mode prints ``{"event": "open", ...}`` once connected
and one JSON result line when it stops, which it does by itself: at
``--seconds``, after ``--count`` frames, or when the server closes the
connection (with ``--reconnect``: it connects again and goes on until time is
up). ``--rate`` paces the frames (per second; 0, the default, is as fast as
the socket takes them).

``flood``
    1-byte masked text frames (7 bytes on the wire) on an echo route, while
    reading and counting the echoes: echoes are messages the server handled.
    The result has the echoes per 0.1 s bin, on the ``time.monotonic()`` clock
    that every process of the machine shares.
``fragments``
    a non-final text frame, then empty non-final continuation frames (6 bytes
    each): a message that never ends and never grows.
``pings``
    ping frames with 125-byte payloads from a client that never reads (and has
    a 4 KiB receive buffer): the server owes it a pong for each.
``nonreader``
    joins a route, never reads, and sends a ping a second (which is how it
    notices it was disconnected).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchlib"

from .wsclient import (  # noqa: E402
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    Timeout,
    client_frame,
    close_code,
    continuation_frame,
    fragment_start,
    split_frames,
)

BIN = 0.1
FLOOD_FRAME = client_frame(OP_TEXT, b"x")
ECHO = b"\x81\x01x"
PING_PAYLOAD = b"p" * 125
SMALL_RCVBUF = 4096


def _batch(frame: bytes, rate: float, per_second_slices: int = 100) -> tuple[bytes, int]:
    """A block of ``frame`` repeated: ~64 KiB at full speed, one pacing slice's worth otherwise."""
    n = max(1, int(rate / per_second_slices)) if rate else max(1, 65536 // len(frame))
    return frame * n, n


class Pacer:
    """Sends blocks of frames at ``rate`` frames a second (0: as fast as the socket takes them)."""

    def __init__(self, rate: float, frames_per_block: int):
        self.interval = frames_per_block / rate if rate else 0.0
        self.next = time.monotonic()

    def ready(self) -> bool:
        """May the next block go now?"""
        return not self.interval or time.monotonic() >= self.next

    def sent(self) -> None:
        """One block went out."""
        if self.interval:
            self.next = max(self.next + self.interval, time.monotonic() - 1.0)


def _count_echoes(buf: bytearray) -> tuple[int, list[tuple[int, bytes]]]:
    """(echo frames taken from ``buf``, other frames): the common case costs one memcmp-like pass."""
    k = len(buf) // 3
    if k and buf.count(ECHO, 0, 3 * k) == k:  # k 3-byte matches in 3k bytes: they tile the prefix
        del buf[: 3 * k]
        return k, []
    echoes, others = 0, []
    for opcode, payload in split_frames(buf):
        if opcode == OP_TEXT and payload == b"x":
            echoes += 1
        else:
            others.append((opcode, payload))
    return echoes, others


def flood(client: RawClient, seconds: float, count: int, rate: float = 0.0) -> dict:
    """Send 7-byte text frames for ``seconds`` (or ``count`` frames), counting the echoes."""
    block, per_block = _batch(FLOOD_FRAME, rate)
    pacer = Pacer(rate, per_block)
    sock, started = client.sock, time.monotonic()
    deadline = started + seconds
    bins: dict[int, int] = {}
    sent_bytes, echoes, closed = 0, 0, None
    pending = memoryview(b"")
    while time.monotonic() < deadline and sent_bytes // len(FLOOD_FRAME) < count and closed is None:
        for _ in range(16):  # read first: a flooder that cannot keep up with its echoes is a slow consumer
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                closed = closed or 1006
                break
            client.buf += data
            got, others = _count_echoes(client.buf)
            if got:
                echoes += got
                slot = int((time.monotonic() - started) / BIN)
                bins[slot] = bins.get(slot, 0) + got
            closed = _answer(client, others) or closed
        if closed is not None:
            break
        if not pending and pacer.ready():
            pending = memoryview(block)
            pacer.sent()
        if pending:
            try:
                n = sock.send(pending)
                pending, sent_bytes = pending[n:], sent_bytes + n
            except BlockingIOError:
                pass
            except OSError:
                closed = 1006
                break
        client.wait(writable=bool(pending), deadline=min(deadline, time.monotonic() + 0.01))
    ended = time.monotonic()
    client.close(reset=True)  # the server's unread backlog goes with the connection
    return {
        "sent": sent_bytes // len(FLOOD_FRAME),
        "handled": echoes,
        "seconds": round(ended - started, 3),
        "started": started,
        "bin": BIN,
        "bins": [bins.get(i, 0) for i in range(int((ended - started) / BIN) + 1)],
        "closed": closed,
    }


def _answer(client: RawClient, frames: list[tuple[int, bytes]]) -> int | None:
    """Answer the server's pings; the close code if it closed."""
    for opcode, payload in frames:
        if opcode == OP_PING:
            client.send_all(client_frame(OP_PONG, payload), time.monotonic() + 1)
        elif opcode == OP_CLOSE:
            return close_code(payload)
    return None


def fragments(client: RawClient, seconds: float, count: int, rate: float = 0.0) -> dict:
    """Start a text message, then send ``count`` empty continuation frames (or until ``seconds``)."""
    started = time.monotonic()
    deadline = started + seconds
    if not client.send_all(fragment_start(), deadline):
        return {"sent": 0, "closed": None, "seconds": seconds, "timeout": True}
    block, per_block = _batch(continuation_frame(), rate)
    pacer = Pacer(rate, per_block)
    sent, closed, timed_out = 0, None, False
    while sent < count and closed is None:
        if time.monotonic() >= deadline:
            timed_out = True
            break
        if not pacer.ready():
            client.wait(deadline=min(deadline, pacer.next))
            closed = _closed_by_server(client)
            continue
        n = min(per_block, count - sent)
        try:
            if not client.send_all(block if n == per_block else continuation_frame() * n, deadline):
                timed_out = True
                break
        except OSError:
            closed = 1006
            break
        pacer.sent()
        sent += n
        closed = _closed_by_server(client)
    if closed is None:
        client.read_some(time.monotonic() + 1.0)  # a server that noticed late may close now
        closed = _closed_by_server(client)
    return {"sent": sent, "closed": closed, "seconds": round(time.monotonic() - started, 3), "timeout": timed_out}


def _closed_by_server(client: RawClient) -> int | None:
    """Read what is there without waiting; the close code if the server closed (1006: without a frame)."""
    while True:
        try:
            data = client.sock.recv(262144)
        except BlockingIOError:
            break
        except OSError:
            return 1006
        if not data:
            client.eof = True
            break
        client.buf += data
    for opcode, payload in split_frames(client.buf):
        if opcode == OP_CLOSE:
            return close_code(payload)
    return 1006 if client.eof else None


def pings(client: RawClient, seconds: float, count: int, rate: float = 0.0) -> dict:
    """Send ``count`` pings (or until ``seconds``) and read nothing meanwhile."""
    started = time.monotonic()
    deadline = started + seconds
    frame = client_frame(OP_PING, PING_PAYLOAD)
    block, per_block = _batch(frame, rate)
    pacer = Pacer(rate, per_block)
    sent, refused, timed_out = 0, False, False
    while sent < count:
        if time.monotonic() >= deadline:
            timed_out = True
            break
        if not pacer.ready():
            time.sleep(max(0.0, min(pacer.next, deadline) - time.monotonic()))
            continue
        n = min(per_block, count - sent)
        try:
            if not client.send_all(block if n == per_block else frame * n, deadline):
                timed_out = True
                break
        except OSError:
            refused = True
            break
        pacer.sent()
        sent += n
    return {"sent": sent, "send_failed": refused, "seconds": round(time.monotonic() - started, 3), "timeout": timed_out}


def read_rest(client: RawClient, idle: float = 2.0, deadline: float | None = None, texts: list | None = None) -> dict:
    """Read until EOF, a close frame, or ``idle`` seconds of silence; what arrived, frame by frame.

    Text payloads are appended to ``texts`` when it is given.
    """
    deadline = deadline or time.monotonic() + 30
    counts: dict[int, int] = {}
    closed, reason, corrupt = None, "", False
    while closed is None and time.monotonic() < deadline:
        got = split_frames(client.buf)
        if not got and not client.read_some(min(deadline, time.monotonic() + idle)):
            break
        for opcode, payload in got:
            counts[opcode] = counts.get(opcode, 0) + 1
            if opcode == OP_CLOSE:
                closed, reason = close_code(payload), payload[2:].decode("utf-8", "replace")
                break
            if opcode == OP_TEXT and texts is not None:
                texts.append(payload)
            elif opcode not in (0x1, 0x2, 0x9, 0xA):
                corrupt = True
    return {
        "frames": {str(k): v for k, v in counts.items()},
        "close": closed if closed is not None else (1006 if client.eof else None),
        "reason": reason,
        "leftover_bytes": len(client.buf),
        "corrupt": corrupt,
        "eof": client.eof,
    }


def nonreader(client: RawClient, seconds: float, count: int, rate: float = 1.0) -> dict:
    """Stay connected without reading; ping at ``rate`` per second to learn when the server drops us."""
    started = time.monotonic()
    deadline = started + seconds
    interval = 1.0 / rate if rate else 1.0
    sent = 0
    while time.monotonic() < deadline and sent < count:
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        try:
            client.sock.send(client_frame(OP_PING, b"?"))
            sent += 1
        except BlockingIOError:
            pass
        except OSError:
            return {"sent": sent, "closed": 1006, "seconds": round(time.monotonic() - started, 3)}
    return {"sent": sent, "closed": None, "seconds": round(time.monotonic() - started, 3)}


MODES = {"flood": flood, "fragments": fragments, "pings": pings, "nonreader": nonreader}


def emit(event: str, **fields) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> dict:
    """Run one mode until time is up (reconnecting if asked); totals over every connection."""
    attack = MODES[args.mode]
    deadline = time.monotonic() + args.seconds
    totals: dict = {"connections": 0, "closed_by_server": 0, "refused": 0, "runs": []}
    while time.monotonic() < deadline:
        rcvbuf = SMALL_RCVBUF if args.mode in ("pings", "nonreader") else 0
        try:
            client = RawClient(args.port, args.path, args.origin, source=args.source, rcvbuf=rcvbuf, timeout=10)
        except (OSError, ConnectionError, Timeout) as exc:
            totals["refused"] += 1
            totals["last_error"] = repr(exc)
            if not args.reconnect:
                break
            time.sleep(0.5)
            continue
        totals["connections"] += 1
        if totals["connections"] == 1:
            emit("open", mode=args.mode, t=time.monotonic())
        left = deadline - time.monotonic()
        rate = () if args.rate is None else (args.rate,)
        result = attack(client, left, args.count, *rate)
        if result.get("closed") or result.get("send_failed"):
            totals["closed_by_server"] += 1
        totals["runs"].append(result)
        if args.mode != "flood":
            client.close(reset=True)
        if not args.reconnect:
            break
        time.sleep(0.2)
    for key in ("sent", "handled"):
        totals[key] = sum(run.get(key, 0) for run in totals["runs"])
    if len(totals["runs"]) > 20:
        totals["runs"] = totals["runs"][:10] + totals["runs"][-10:]
    return totals


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, attack, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--origin", required=True, help="Origin header of the handshake")
    parser.add_argument("--source", help="source address (127.0.0.x)")
    parser.add_argument("--seconds", type=float, default=5.0, help="stop after this long")
    parser.add_argument("--count", type=int, default=10**9, help="stop after this many frames")
    parser.add_argument("--rate", type=float, help="frames per second (default: as fast as possible)")
    parser.add_argument("--reconnect", action="store_true", help="connect again when the server drops us")
    args = parser.parse_args(argv)
    emit(args.mode, **run(args))


class HostileProcess:
    """One hostile client in a process of its own (``python -m benchlib.hostile MODE ...``)."""

    def __init__(self, mode: str, port: int, path: str, origin: str, *options: str):
        scripts = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-m", "benchlib.hostile", mode, "--port", str(port), "--path", path]
        argv += ["--origin", origin, *options]
        self.proc = subprocess.Popen(argv, cwd=scripts, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.mode = mode
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def wait(self, event: str, timeout: float) -> dict | None:
        """The next ``event`` line, or None after ``timeout`` seconds or when the process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if got["event"] == event:
                return got
            if got["event"] == "exit":
                return None

    def result(self, timeout: float) -> dict | None:
        """The final result line (None if it never came); the process is gone afterwards."""
        got = self.wait(self.mode, timeout)
        self.stop()
        return got

    def stop(self) -> None:
        """Kill the process if it is still running."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
