"""Redis under Sentinel, two asok_green nodes, steady broadcasts and the clients that count them.

:class:`SentinelSet` runs Debian's ``redis-server`` twice (a primary and its
replica) and ``redis-sentinel`` three times on free loopback ports, with short
timeouts so a failover takes seconds. :class:`Traffic` sends numbered messages
at a steady rate to the nodes and records what plain and ``asok-green.v1``
clients (asok_green.client.ResumingClient) receive, for tests/test_failover.py
and scripts/failover_bench.py. Without redis-sentinel installed the tests fail
under CI=true and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
import websocket

from asok_green.client import ResumingClient
from tests.asok_project import project_env
from tests.conftest import ServerProcess, asok_serve, free_port

SERVICE = "mymaster"

#: Routes appended to the project's wsgi.py: /pub broadcasts what it gets to a path without
#: history (plain clients) and to one that keeps it (v1 and plain clients).
FAILOVER_ROUTES = """

ws.keep_history("/feed/[name]", size=5000)


@ws.on("/pub/[name]")
def failover_pub(conn, message):
    name = conn.params["name"]
    ws.broadcast("/live/" + name, message)
    ws.broadcast("/feed/" + name, message)


@ws.on("/live/[name]")
def failover_live(conn, message):
    pass


@ws.on("/feed/[name]")
def failover_feed(conn, message):
    pass
"""


def need(binary: str) -> str:
    """The path of ``binary``; without it, fail under CI=true and skip elsewhere."""
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed: `apt-get install -y redis-server redis-sentinel` (scripts/test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def resp(port: int, *args: str, timeout: float = 1.0) -> str:
    """Send one command in RESP to 127.0.0.1:``port``; the raw answer (its first chunk)."""
    import socket

    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload.encode())
        return sock.recv(65536).decode(errors="replace")


class Process:
    """A redis-server or redis-sentinel process, its files in ``folder``."""

    def __init__(self, argv: list[str], port: int, folder: pathlib.Path, name: str):
        """Start it and wait until it answers PING."""
        self.argv, self.port, self.folder, self.name = argv, port, folder, name
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start (again) on the same port."""
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                if resp(self.port, "PING").startswith("+PONG"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within 10s")

    def signal(self, sig: int) -> None:
        """Send ``sig`` (SIGKILL, SIGSTOP, SIGCONT) if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                self.proc.wait(10)

    def stop(self) -> None:
        """Stop it (a paused one is woken first so it can exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SentinelSet:
    """A primary, its replica and three sentinels watching them (quorum 2), on 127.0.0.1."""

    def __init__(self, folder: pathlib.Path, down_after_ms: int = 1000, failover_timeout_ms: int = 3000):
        """Start them all and wait until every sentinel knows the replica and the two other sentinels."""
        server, sentinel = need("redis-server"), need("redis-sentinel")
        self.folder = folder
        self.processes: list[Process] = []
        try:
            self.primary = self._redis(server, "primary")
            self.replica = self._redis(server, "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
            self.sentinels = [self._sentinel(sentinel, i, down_after_ms, failover_timeout_ms) for i in range(3)]
            self.wait_settled(self.primary.port, replicas=1)
        except BaseException:
            self.stop()
            raise
        self.url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{SERVICE}/0"

    def _redis(self, binary: str, name: str, *extra: str) -> Process:
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.folder), "--logfile", str(self.folder / f"{name}-{port}.log")]
        # No 5 s wait before a full sync: a replica (or a demoted primary) catches up at once.
        argv += ["--repl-diskless-sync-delay", "0", *extra]
        process = Process(argv, port, self.folder, name)
        self.processes.append(process)
        return process

    def _sentinel(self, binary: str, index: int, down_after_ms: int, failover_timeout_ms: int) -> Process:
        port = free_port()
        conf = self.folder / f"sentinel-{index}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.folder}\n"
            f"logfile {self.folder / f'sentinel-{index}.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        process = Process([binary, str(conf)], port, self.folder, f"sentinel {index}")
        self.processes.append(process)
        return process

    def master(self, sentinel: Process | None = None) -> dict:
        """``SENTINEL MASTER`` as a dict, from ``sentinel`` (the first by default)."""
        import redis

        port = (sentinel or self.sentinels[0]).port
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            return client.sentinel_master(SERVICE)

    def primary_port(self) -> int | None:
        """The port of the primary the sentinels agree on (None while they do not)."""
        ports = set()
        for sentinel in self.sentinels:
            try:
                ports.add(int(self.master(sentinel)["port"]))
            except Exception:
                return None
        return ports.pop() if len(ports) == 1 else None

    def wait_settled(self, port: int, replicas: int, timeout: float = 30) -> None:
        """Wait until every sentinel names ``port`` the primary, knows ``replicas`` replicas and the others."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = [self.master(s) for s in self.sentinels]
                if all(
                    int(s["port"]) == port
                    and int(s["num-slaves"]) >= replicas
                    and int(s["num-other-sentinels"]) == 2
                    and "s_down" not in s["flags"]
                    for s in states
                ):
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"sentinels did not settle on {port} within {timeout}s")
            time.sleep(0.1)

    def wait_failover(self, old_port: int, timeout: float = 30) -> tuple[Process, float]:
        """Wait until the sentinels agree on a primary other than ``old_port`` that answers PING.

        Returns it and the monotonic time it first answered as the primary.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port:
                try:
                    if "role:master" in resp(port, "INFO", "replication", timeout=0.5):
                        answered = time.monotonic()
                        return next(p for p in self.processes if p.port == port), answered
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"no failover from {old_port} within {timeout}s")

    def by_port(self, port: int) -> Process:
        """The redis-server process on ``port``."""
        return next(p for p in self.processes if p.port == port)

    def stop(self) -> None:
        """Stop every process."""
        for process in reversed(self.processes):
            process.stop()


def sentinel_node(project: pathlib.Path, logs: pathlib.Path, url: str, ttl: float, **extra: str) -> ServerProcess:
    """An asok_green node (``asok serve --gevent``) of the cluster on ``url``."""
    env = project_env(WS_ADAPTER="redis", WS_REDIS_URL=url, WS_PRESENCE_TTL=str(ttl), SESSION_BACKEND="file", **extra)
    node = asok_serve(project, logs, env=env)
    node.wait_for_log("joined the cluster", timeout=10)
    return node


# -- clients that count --------------------------------------------------------------------


@dataclass
class Received:
    """What one client got: (monotonic time, text) per message, and its continuity-lost notices."""

    kind: str
    node: str
    messages: list[tuple[float, str]] = field(default_factory=list)
    lost: list[float] = field(default_factory=list)
    reconnects: int = 0


class Reader(threading.Thread):
    """A client of one node, in a thread: plain (websocket-client) or v1 (ResumingClient)."""

    def __init__(self, url: str, kind: str, node: str, origin: str):
        """Connect now (the handshake is done when this returns)."""
        super().__init__(daemon=True)
        self.received = Received(kind, node)
        self.stopping = threading.Event()
        self.v1 = kind == "v1"
        if self.v1:
            self.client = ResumingClient(url, origin=origin, on_continuity_lost=self._lost, ping_interval=2.0)
            self.client.connect()
            self.client.wait_ready(10)
        else:
            self.client = websocket.create_connection(url, origin=origin, timeout=10)
            self.client.settimeout(0.5)

    def _lost(self, error) -> None:
        self.received.lost.append(time.monotonic())

    def run(self) -> None:
        """Read until stopped (or, for a plain client, until its connection ends)."""
        record = self.received.messages.append
        while not self.stopping.is_set():
            try:
                if self.v1:
                    text = self.client.recv(timeout=0.5).data
                else:
                    text = self.client.recv()
            except (TimeoutError, websocket.WebSocketTimeoutException):
                continue
            except Exception:
                return  # closed: its node died
            if isinstance(text, str) and text.startswith("m:"):
                record((time.monotonic(), text))

    def stop(self) -> None:
        """Stop reading and close."""
        self.stopping.set()
        self.join(5)
        if self.v1:
            self.received.reconnects = self.client.stats["reconnects"]
        try:
            self.client.close()
        except Exception:
            pass


class Sender(threading.Thread):
    """Sends ``m:<origin>:<n>`` to /pub/<name> of one node, ``rate`` a second, until stopped."""

    def __init__(self, node: ServerProcess, origin: str, name: str, rate: float):
        """Connect now; start sending on :meth:`start`."""
        super().__init__(daemon=True)
        self.origin, self.interval = origin, 1.0 / rate
        self.ws = websocket.create_connection(f"{node.ws_url}/pub/{name}", origin=node.url, timeout=5)
        self.sent: list[tuple[float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Send at a steady pace (each message at its own slot, not after the previous one)."""
        start = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            text = f"m:{self.origin}:{n}"
            try:
                self.ws.send(text)
            except Exception:
                return  # its node died
            self.sent.append((time.monotonic(), text))
            n += 1
            delay = start + n * self.interval - time.monotonic()
            if delay > 0:
                self.stopping.wait(delay)

    def stop(self) -> None:
        """Stop sending and close."""
        self.stopping.set()
        self.join(5)
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass


@dataclass
class Tally:
    """What one kind of client got of what was sent: the bench's and the test's numbers."""

    kind: str
    clients: int
    sent: int
    delivered: int
    out_of_order: int
    duplicates: int
    continuity_lost: int
    longest_silence: float
    missing: int
    #: The longest a client went without a message of one sender (the other node's, in a failover).
    longest_sender_gap: float = 0.0


def tally(readers: list[Reader], sent: list[str], started: float, ended: float) -> Tally:
    """Per-client counts for one kind, summed; ``longest_silence`` is the worst client's, in seconds."""
    wanted = set(sent)
    delivered = out_of_order = duplicates = lost = missing = 0
    silence = sender_gap = 0.0
    origins = {text.split(":")[1] for text in sent}
    for reader in readers:
        got = reader.received
        seen: set[str] = set()
        last_by_origin: dict[str, int] = {}
        previous = started
        previous_by_origin = dict.fromkeys(origins, started)
        for at, text in got.messages:
            silence = max(silence, at - previous)
            previous = at
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            _, origin, n = text.split(":")
            if origin in previous_by_origin:
                sender_gap = max(sender_gap, at - previous_by_origin[origin])
                previous_by_origin[origin] = at
            if int(n) < last_by_origin.get(origin, -1):
                out_of_order += 1
            last_by_origin[origin] = max(int(n), last_by_origin.get(origin, -1))
        silence = max(silence, ended - previous)
        delivered += len(seen & wanted)
        missing += len(wanted - seen)
        lost += len(got.lost)
    kind = readers[0].received.kind if readers else "?"
    total = len(sent) * len(readers)
    return Tally(kind, len(readers), total, delivered, out_of_order, duplicates, lost, silence, missing, sender_gap)


def online_on(node: ServerProcess) -> list | None:
    """The users ``node`` says are online (its /introspect route), or None if it does not answer."""
    try:
        client = websocket.create_connection(f"{node.ws_url}/introspect", origin=node.url, timeout=2)
    except Exception:
        return None
    try:
        client.send("{}")
        while True:
            text = client.recv()
            message = json.loads(text)
            if "online" in message:
                return sorted(message["online"])
    except Exception:
        return None
    finally:
        try:
            client.close(timeout=0.5)
        except Exception:
            pass
