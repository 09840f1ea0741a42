"""Driving the load: loadgen processes, the broadcast control client, and wrk."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

from .servers import SCRIPTS

sys.path.insert(0, str(SCRIPTS))
from loadgen import OP_CLOSE, OP_TEXT, client_frame, handshake_request, split_frames  # noqa: E402

LOADGEN = SCRIPTS / "loadgen.py"
#: Connections one loadgen process holds: well under the 20,000 open files a process may have.
PER_PROCESS = 5000


class SourceAddresses:
    """Hands out 127.0.0.x source addresses, one per loadgen process, round robin."""

    def __init__(self, first: int = 10, last: int = 250):
        self.first, self.last, self.next = first, last, first

    def take(self) -> str:
        """The next source address."""
        address = f"127.0.0.{self.next}"
        self.next = self.first if self.next >= self.last else self.next + 1
        return address


class Loadgen:
    """One ``scripts/loadgen.py`` process; its JSON events arrive on a queue."""

    def __init__(
        self,
        mode: str,
        url: str,
        *options: str,
        source: str | None = None,
        max_seconds: float = 600,
        cpus: set[int] | None = None,
    ):
        argv = [sys.executable, str(LOADGEN), mode, "--url", url, "--max-seconds", str(max_seconds), *options]
        if source:
            argv += ["--source", source]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def wait(self, event: str, timeout: float) -> dict | None:
        """The next ``event`` (others before it are dropped), or None after ``timeout`` or exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                got = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if got["event"] == event:
                return got
            if got["event"] == "exit":
                return None

    def command(self, **cmd) -> None:
        """Send one command line (hold mode)."""
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def close(self, timeout: float = 30) -> None:
        """Ask it to close its connections and exit; kill it if it does not."""
        self.command(cmd="close")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Holders:
    """Idle connections held by loadgen processes, grown level by level.

    Every level is split over all the processes, which open their shares at the
    same time: the server registers their connections interleaved, so a
    broadcast reaches every process from its start and they read in parallel.
    """

    #: The loadgen mode the processes run.
    mode = "hold"

    def __init__(
        self,
        url: str,
        origin: str,
        sources: SourceAddresses,
        cookie: str | None = None,
        most: int = 0,
        max_seconds: float = 600,
        cpus: set[int] | None = None,
    ):
        self.url, self.origin, self.cookie, self.sources = url, origin, cookie, sources
        self.cpus = cpus  # the cores the processes may run on (None: any)
        self.max_seconds = max_seconds  # each loadgen process exits after this long, whatever happens
        self.processes = max(1, -(-most // PER_PROCESS))
        self.procs: list[Loadgen] = []
        self.open = 0
        self.failed = 0
        self.errors: dict[str, int] = {}

    def _start(self, open_timeout: float) -> None:
        concurrency = str(max(8, 64 // self.processes))
        for _ in range(self.processes):
            options = ["--count", "0", "--concurrency", concurrency, "--origin", self.origin]
            options += ["--open-timeout", str(open_timeout)]
            if self.cookie:
                options += ["--cookie", self.cookie]
            source = self.sources.take()
            self.procs.append(
                Loadgen(self.mode, self.url, *options, source=source, max_seconds=self.max_seconds, cpus=self.cpus)
            )
        for gen in self.procs:
            gen.wait("opened", 30)

    def grow(self, count: int, open_timeout: float = 120) -> dict:
        """Open ``count`` more connections, shared out over the processes (at most PER_PROCESS each)."""
        started = time.monotonic()
        self.grow_start(count, open_timeout)
        self.grow_finish(count, open_timeout)
        return {"seconds": time.monotonic() - started}

    def _shares(self, count: int) -> list[int]:
        return [count // len(self.procs) + (1 if i < count % len(self.procs) else 0) for i in range(len(self.procs))]

    def grow_start(self, count: int, open_timeout: float = 120) -> None:
        """Ask the processes to open ``count`` more connections, without waiting (see :meth:`grow_finish`)."""
        if not self.procs:
            self.processes = max(self.processes, -(-count // PER_PROCESS))
            self._start(open_timeout)
        for gen, share in zip(self.procs, self._shares(count)):
            gen.command(cmd="open", count=share)

    def grow_finish(self, count: int, open_timeout: float = 120) -> None:
        """Wait until the processes have opened what :meth:`grow_start` asked for."""
        for gen, share in zip(self.procs, self._shares(count)):
            opened = gen.wait("opened", open_timeout + 30) or {"ok": 0, "failed": share, "errors": {"loadgen": 1}}
            self.open += opened["ok"]
            self.failed += opened["failed"]
            for reason, n in opened.get("errors", {}).items():
                self.errors[reason] = self.errors.get(reason, 0) + n

    def still_open(self) -> int:
        """Connections open now, as the loadgen processes count them."""
        for gen in self.procs:
            gen.command(cmd="status")
        total = 0
        for gen in self.procs:
            status = gen.wait("status", 10)
            total += status["open"] if status else 0
        self.open = total
        return total

    def status(self) -> dict:
        """Connections open now and pings answered so far, summed over the processes."""
        for gen in self.procs:
            gen.command(cmd="status")
        total = {"open": 0, "pings": 0}
        for gen in self.procs:
            status = gen.wait("status", 10) or {}
            for key in total:
                total[key] += status.get(key, 0)
        self.open = total["open"]
        return total

    def say(self, text: str, spread: float = 0.0, timeout: float = 60) -> int:
        """Every open connection sends ``text`` once (spread over ``spread`` seconds); returns how many did."""
        for gen in self.procs:
            gen.command(cmd="say", text=text, spread=spread)
        sent = 0
        for gen in self.procs:
            said = gen.wait("said", spread + timeout)
            sent += said["sent"] if said else 0
        return sent

    def arm(self, round_id: int, messages: int) -> int:
        """Tell every process to expect ``messages`` per connection; return how many are open."""
        for gen in self.procs:
            gen.command(cmd="expect", round=round_id, messages=messages)
        total = 0
        for gen in self.procs:
            armed = gen.wait("armed", 10)
            total += armed["open"] if armed else 0
        return total

    def collect(self, timeout: float) -> tuple[int, float | None]:
        """(connections that got every message of the round, monotonic time of the last delivery)."""
        complete, last = 0, None
        deadline = time.monotonic() + timeout
        for gen in self.procs:
            got = gen.wait("received", max(0.0, deadline - time.monotonic()))
            if got is None:
                gen.command(cmd="status")
                got = gen.wait("status", 5)
            if got:
                complete += got["complete"]
                if got["complete"] and got["t_last"]:
                    last = got["t_last"] if last is None else max(last, got["t_last"])
        return complete, last

    def close(self) -> None:
        """Close every held connection and end the processes."""
        for gen in self.procs:
            gen.command(cmd="close")
        for gen in self.procs:
            gen.close()
        self.procs = []
        self.open = 0


class ControlClient:
    """A blocking WebSocket client on ``/room`` that triggers broadcasts (the control protocol)."""

    def __init__(self, port: int, origin: str, path: str = "/room", timeout: float = 30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(handshake_request("127.0.0.1", port, path, origin))
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("control client: connection closed during handshake")
            self.buf += data
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0] + b" ":
            raise ConnectionError(f"control client: {head.splitlines()[0]!r}")
        self.buf = bytearray(rest)

    def broadcast(self, count: int, size: int, timeout: float = 60) -> bool:
        """Ask for ``count`` broadcasts of ``size`` bytes; True once the server says it is done."""
        self.sock.sendall(client_frame(OP_TEXT, f"!bcast {count} {size}".encode()))
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for opcode, payload in split_frames(self.buf):
                if opcode == OP_TEXT and payload.startswith(b"!done"):
                    return True
                if opcode == OP_CLOSE:
                    return False
            data = self.sock.recv(65536)
            if not data:
                return False
            self.buf += data
        return False

    def close(self) -> None:
        """Close the connection."""
        try:
            self.sock.sendall(client_frame(OP_CLOSE, b"\x03\xe8"))
        except OSError:
            pass
        self.sock.close()


def echo(url: str, origin: str, clients: int, seconds: float, source: str) -> dict:
    """Echo messages/s with ``clients`` concurrent clients (one loadgen process)."""
    options = ["--clients", str(clients), "--seconds", str(seconds), "--origin", origin]
    gen = Loadgen("echo", url, *options, source=source, max_seconds=seconds + 60)
    result = gen.wait("echo", seconds + 60) or {"rate": 0.0, "failed": clients, "messages": 0}
    gen.close()
    return result


def handshakes(url: str, origin: str, count: int, concurrency: int, seconds: float, source: str) -> dict:
    """Opening handshakes per second (open, upgrade, close), ``concurrency`` in flight."""
    options = ["--count", str(count), "--concurrency", str(concurrency), "--seconds", str(seconds)]
    gen = Loadgen("handshakes", url, *options, "--origin", origin, source=source, max_seconds=seconds + 60)
    result = gen.wait("handshakes", seconds + 60) or {"rate": 0.0, "ok": 0, "failed": count}
    gen.close()
    return result


def wrk_available() -> bool:
    """Is ``wrk`` installed (Debian package ``wrk``)?"""
    return shutil.which("wrk") is not None


def wrk(url: str, seconds: float, connections: int = 32) -> dict:
    """Requests/s from one wrk thread over ``connections`` keep-alive connections for ``seconds``."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    return {
        "rate": float(rate.group(1)) if rate else 0.0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "ok": done.returncode == 0 and rate is not None,
    }
