"""Connection churn: WebSockets opened at a steady rate, held briefly, then closed or reset.

    python -m benchlib.churn --url ws://127.0.0.1:PORT/room --rate 500 --seconds 60 [--hold 1.0]

(run from scripts/). Every ``1/rate`` seconds a connection starts; once
upgraded it is held ``--hold`` seconds, then every other one closes with a
close frame (and waits for the server's, 10 s at most) and the rest are reset
(SO_LINGER 0: the server sees a RST). Source addresses rotate over
``--sources`` (127.0.0.x), so ephemeral ports never run out. At most
``--max-in-flight`` handshakes wait at once: against a server that stalls,
the rest are counted as skipped rather than piled up. Stops by itself after
``--seconds`` and prints one JSON line, ``{"event": "churn", ...}``.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import struct
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchlib"

from .servers import SCRIPTS  # noqa: E402
from .wsclient import OP_CLOSE, client_frame, split_frames  # noqa: E402

if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
from loadgen import CLOSED, OP_PING, OP_PONG, Client, Loop, emit, raise_open_files  # noqa: E402

LINGER_RESET = struct.pack("ii", 1, 0)
CLOSE_WAIT = 10.0


class Churn(Loop):
    """Opens connections at a rate and ends each after ``hold`` seconds, alternating close frame and reset."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.sources = args.sources.split(",")
        self.hold = args.hold
        self.max_in_flight = args.max_in_flight
        self.due: collections.deque = collections.deque()  # (time, client), in time order
        self.closing: dict[int, float] = {}  # fd -> give-up time
        self.counts = collections.Counter()

    def run(self, rate: float, seconds: float) -> None:
        """Churn for ``seconds``, then end what is still open and report."""
        started = time.monotonic()
        stop = min(started + seconds, self.deadline)
        next_start, turn = started, 0
        while time.monotonic() < stop:
            now = time.monotonic()
            while next_start <= now:
                next_start += 1.0 / rate
                if self.in_flight >= self.max_in_flight:
                    self.counts["skipped"] += 1
                    continue
                self.source = self.sources[turn % len(self.sources)]
                turn += 1
                self.counts["attempted"] += 1
                self.start_connection()
            self.poll(min(0.01, max(0.0, next_start - time.monotonic())))
            self.end_due(time.monotonic())
            self.expire_handshakes()
        self.end_due(time.monotonic(), everything=True)
        give_up = time.monotonic() + CLOSE_WAIT
        while self.closing and time.monotonic() < give_up:
            self.poll(0.05)
        self.counts["close_timeouts"] += len(self.closing)
        elapsed = time.monotonic() - started
        self.close_all()
        emit(
            "churn",
            seconds=round(elapsed, 1),
            rate=round(self.counts["opened"] / elapsed, 1) if elapsed else 0.0,
            failed=self.failed,
            errors=self.errors,
            **dict(self.counts),
        )

    def on_open(self, client: Client) -> None:
        self.counts["opened"] += 1
        self.due.append((time.monotonic() + self.hold, client))

    def end_due(self, now: float, everything: bool = False) -> None:
        """End the connections whose hold is over (all, with ``everything``); give up on slow close handshakes."""
        while self.due and (everything or self.due[0][0] <= now):
            _, client = self.due.popleft()
            if client.state == CLOSED:
                continue
            self.counts["ended"] += 1
            if self.counts["ended"] % 2:
                self.closing[client.fd] = now + CLOSE_WAIT
                self.send(client, client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            else:
                try:
                    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                except OSError:
                    pass
                self.counts["reset"] += 1
                self.forget(client)
        if self.closing:
            for fd, limit in list(self.closing.items()):
                if limit <= now and fd in self.clients:
                    self.counts["close_timeouts"] += 1
                    self.forget(self.clients[fd])

    def forget(self, client: Client) -> None:
        """Close our side without counting the connection as lost."""
        self.closing.pop(client.fd, None)
        if client.state == CLOSED:
            return
        client.state = CLOSED
        self.clients.pop(client.fd, None)
        try:
            self.epoll.unregister(client.fd)
        except OSError:
            pass
        client.sock.close()
        self.n_open -= 1

    def handle_frames(self, client: Client) -> None:
        closing = client.fd in self.closing
        for opcode, payload in split_frames(client.inbuf):
            if opcode == OP_CLOSE:
                if closing:
                    self.counts["closed_clean"] += 1
                    self.forget(client)
                else:
                    self.counts["closed_by_server"] += 1
                    self.send(client, client_frame(OP_CLOSE, payload[:2]))
                    self.forget(client)
                return
            if opcode == OP_PING and not closing:
                self.send(client, client_frame(OP_PONG, payload))
            elif opcode != OP_PONG:
                self.counts["messages"] += 1

    def on_lost(self, client: Client) -> None:
        self.closing.pop(client.fd, None)
        self.counts["dropped_by_server"] += 1


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and churn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/PATH")
    parser.add_argument("--origin", help="Origin header (default: http://HOST:PORT)")
    parser.add_argument("--rate", type=float, default=500.0, help="connections opened per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="churn for this long")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each connection stays open")
    parser.add_argument("--sources", default=",".join(f"127.0.0.{i}" for i in range(100, 116)))
    parser.add_argument("--max-in-flight", type=int, default=256, help="handshakes waiting at once, at most")
    args = parser.parse_args(argv)
    args.source, args.cookie, args.open_timeout, args.stall_timeout = None, None, 120.0, 15.0
    args.max_seconds = args.seconds + 60
    raise_open_files()
    Churn(args).run(args.rate, args.seconds)


if __name__ == "__main__":
    main()
