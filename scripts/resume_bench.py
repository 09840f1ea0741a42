"""Resume clients against plain clients: link cuts, a SIGHUP restart, a node's kill -9; and what history costs.

    python scripts/resume_bench.py                       # 60 s per scenario, 100 + 100 clients, 20 broadcasts/s
    python scripts/resume_bench.py --seconds 4 --clients 5 --subscribers 20 --idle 50 --rounds 2   # a smoke run

One run, every scenario with resume clients (``asok-green.v1``, offsets,
``?asok_since=`` on reconnect, the client rule of the contract) and plain
clients (reconnect, nothing more) side by side, each kind in a process of its
own (``resume_bench.py clients ...``), against ``asok serve --gevent`` on a
generated Asok project whose ``/feed`` keeps history:

(a) links: every client connects through a TCP proxy inside this script that
    cuts each link (both sides, with a reset) 2 s after it was made;
(b) restart: one server process on the embedded (SQLite) store, sent SIGHUP
    halfway; every refused connection is counted;
(c) failover: two nodes joined through Redis (history in Redis Streams), the
    clients spread over both; halfway one node is killed with SIGKILL and its
    clients move to the other.

A publisher in this process sends ``--rate`` broadcasts a second for
``--seconds`` (``<seq>:<padding>`` to ``/pub``, which broadcasts it to
``/feed``). Reported per kind of client: delivered / sent, out of order,
duplicates (a sequence number delivered twice), reconnections, continuity
lost. Then, on two servers side by side with history on and off: server CPU per
delivered message in a fan-out to ``--subscribers`` plain clients and resident
memory per idle connection.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SCRIPTS = pathlib.Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for folder in (str(SCRIPTS), str(REPO)):
    if folder not in sys.path:
        sys.path.insert(0, folder)

SUBPROTOCOL = "asok-green.v1"
#: The page origin every client sends: a loopback origin without a port, which the server allows on any port.
ORIGIN = "http://127.0.0.1"

#: Appended to the project's wsgi.py: /feed keeps history unless BENCH_HISTORY=0; /pub broadcasts to it.
FEED_ROUTES = '''
import os as _bench_os

if _bench_os.environ.get("BENCH_HISTORY", "1") != "0":
    ws.keep_history("/feed", size=int(_bench_os.environ.get("BENCH_HISTORY_SIZE", "5000")))
    ws.keep_history("/room", size=200)


@ws.on("/feed")
def bench_feed(conn, message):
    """Subscribers only listen."""


@ws.on("/pub")
def bench_pub(conn, message):
    """`<seq>:<padding>`: broadcast it to /feed, then acknowledge with `ok <seq>`."""
    ws.broadcast("/feed", message)
    conn.send("ok " + message.split(":", 1)[0])
'''


# -- the clients (run in processes of their own: `resume_bench.py clients ...`) -----------------


class ClientLog:
    """What one client delivered to its application, in order, and what happened to its links."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.connects = 0
        self.refused = 0
        self.gaps = 0
        self.dropped_duplicates = 0
        self.continuity_lost = 0
        self.ready = False

    def as_dict(self) -> dict:
        """JSON for the harness."""
        return {
            "seqs": self.seqs,
            "connects": self.connects,
            "refused": self.refused,
            "gaps": self.gaps,
            "dropped_duplicates": self.dropped_duplicates,
            "continuity_lost": self.continuity_lost,
        }


def seq_of(text: str) -> int:
    """The sequence number a feed message carries."""
    return int(text.split(":", 1)[0])


class ResumeState:
    """The contract's client rule: deliver offset last + 1 of the same epoch, drop older, reconnect on a gap."""

    def __init__(self, log: ClientLog) -> None:
        self.log = log
        self.epoch: str | None = None
        self.last = 0

    @property
    def since(self) -> str | None:
        """``<epoch>:<offset>`` for ``?asok_since=``, once a position is known."""
        return None if self.epoch is None else f"{self.epoch}:{self.last}"

    def frame(self, frame: dict) -> bool:
        """Take one decoded frame; False when the link must be closed and resumed (a gap)."""
        notice = frame.get("asok")
        if notice is not None:
            fresh = self.epoch is None
            if notice == "continuity_lost" or (not fresh and frame["e"] != self.epoch):
                self.log.continuity_lost += 1
            if notice == "continuity_lost" or fresh or frame["e"] != self.epoch:
                self.epoch, self.last = frame["e"], frame["o"]
            self.log.ready = True
            return True
        if "o" not in frame:
            return True
        if frame["e"] != self.epoch:
            self.log.continuity_lost += 1
            self.epoch, self.last = frame["e"], frame["o"]
            self.log.seqs.append(seq_of(frame["d"]))
            return True
        if frame["o"] <= self.last:
            self.log.dropped_duplicates += 1
            return True
        if frame["o"] > self.last + 1:
            self.log.gaps += 1
            return False
        self.last = frame["o"]
        self.log.seqs.append(seq_of(frame["d"]))
        return True


async def run_client(kind: str, index: int, urls: list[str], path: str, origin: str, log: ClientLog, stop) -> None:
    """One client, reconnecting until ``stop`` is set; on a refused connection it tries the next URL."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    state = ResumeState(log) if kind == "resume" else None
    offer = [SUBPROTOCOL] if kind in ("resume", "hold") else None
    which = index % len(urls)
    while not stop.is_set():
        url = urls[which] + path
        if state is not None and state.since is not None:
            url += f"?asok_since={state.since}"
        try:
            async with connect(
                url,
                origin=origin,
                subprotocols=offer,
                open_timeout=10,
                ping_interval=None,
                close_timeout=1,
                max_queue=None,
                compression=None,
            ) as ws:
                log.connects += 1
                if state is None:
                    log.ready = True
                async for raw in ws:
                    if kind == "hold":
                        continue
                    if state is None:
                        log.seqs.append(seq_of(raw))
                    elif not state.frame(json.loads(raw)):
                        break
        except (ConnectionRefusedError, InvalidStatus):
            log.refused += 1
            which = (which + 1) % len(urls)
        except (OSError, WebSocketException, asyncio.TimeoutError):
            pass
        if not stop.is_set():
            await asyncio.sleep(random.uniform(0.0, 0.1))


async def clients_main(args: argparse.Namespace) -> None:
    """Run ``args.count`` clients; say ``ready`` once all are registered; on ``stop`` print their logs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    logs = [ClientLog() for _ in range(args.count)]
    urls = args.urls.split(",")
    tasks = [
        asyncio.create_task(run_client(args.kind, i, urls, args.path, args.origin, log, stop))
        for i, log in enumerate(logs)
    ]
    while not all(log.ready for log in logs):
        await asyncio.sleep(0.05)
    print(json.dumps({"event": "ready"}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"event": "done", "clients": [log.as_dict() for log in logs]}), flush=True)


class ClientProcess:
    """A ``resume_bench.py clients`` process of one kind."""

    def __init__(self, kind: str, count: int, urls: list[str], origin: str):
        argv = [sys.executable, __file__, "clients", kind, "--count", str(count), "--urls", ",".join(urls)]
        argv += ["--origin", origin]
        self.kind = kind
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until every client is connected (and, for resume clients, told its position)."""
        line = _read_line(self.proc, timeout)
        if json.loads(line or "{}").get("event") != "ready":
            raise RuntimeError(f"{self.kind} clients did not get ready: {line!r}")

    def finish(self, timeout: float = 60) -> list[dict]:
        """Stop the clients; what each delivered."""
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        line = _read_line(self.proc, timeout)
        self.proc.wait(timeout)
        return json.loads(line)["clients"]

    def kill(self) -> None:
        """Stop the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


# -- the proxy that cuts links ---------------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that resets each link (client and server side) ``cut_after`` seconds after it opened."""

    def __init__(self, upstream_port: int, cut_after: float):
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = 0
        self.links = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._link, "127.0.0.1", 0, backlog=1024))
        self.port = server.sockets[0].getsockname()[1]
        self.server = server
        ready.set()
        self.loop.run_forever()

    async def _link(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        self.links += 1
        writers = (client_writer, server_writer)

        def cut() -> None:
            if not client_writer.transport.is_closing():
                self.cuts += 1
            for writer in writers:
                writer.transport.abort()

        timer = self.loop.call_later(self.cut_after, cut)
        await asyncio.gather(_pump(client_reader, server_writer), _pump(server_reader, client_writer))
        timer.cancel()
        for writer in writers:
            writer.transport.abort()

    def close(self) -> None:
        """Stop listening and stop the loop."""
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _pump(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.transport.abort()


# -- the publisher ---------------------------------------------------------------------------------


class Publisher:
    """Sends ``rate`` broadcasts a second through ``/pub`` for ``seconds``; reconnects (to the next URL) on a loss."""

    def __init__(self, urls: list[str], origin: str, rate: float, seconds: float, size: int = 64):
        self.urls, self.origin, self.rate, self.seconds = urls, origin, rate, seconds
        self.padding = "x" * size
        self.acked: set[int] = set()
        self.attempted = 0
        self.reconnects = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Start publishing in a thread."""
        self.thread.start()

    def join(self) -> None:
        """Wait until the last broadcast was sent."""
        self.thread.join(self.seconds + 120)

    def _connect(self, which: int):
        import websocket

        deadline = time.monotonic() + 60
        while True:
            try:
                return websocket.create_connection(self.urls[which] + "/pub", origin=self.origin, timeout=10), which
            except (OSError, websocket.WebSocketException):
                if time.monotonic() > deadline:
                    raise
                which = (which + 1) % len(self.urls)
                time.sleep(0.05)

    def _run(self) -> None:
        import websocket

        conn, which = self._connect(0)
        started = time.monotonic()
        total = int(self.seconds * self.rate)
        for seq in range(total):
            time.sleep(max(0.0, started + seq / self.rate - time.monotonic()))
            self.attempted = seq + 1
            try:
                conn.send(f"{seq}:{self.padding}")
                if conn.recv() == f"ok {seq}":
                    self.acked.add(seq)
            except (OSError, websocket.WebSocketException):
                # Not resent: the old server may have broadcast it; `sent` counts it if anyone got it.
                self.reconnects += 1
                conn.close(timeout=0.2)
                conn, which = self._connect(which)
        conn.close()


# -- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``asok serve --gevent`` on the bench project, its output in a log file."""

    def __init__(self, project: pathlib.Path, work: pathlib.Path, name: str, env: dict[str, str]):
        from benchlib.project import project_env

        self.port = free_port()
        self.name = name
        self.log = work / f"{name}-{self.port}.log"
        asok = pathlib.Path(sys.executable).parent / "asok"
        self.proc = subprocess.Popen(
            [str(asok), "serve", "--gevent", "--port", str(self.port)],
            cwd=project,
            env=project_env(PYTHONUNBUFFERED="1", **env),
            stdin=subprocess.DEVNULL,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/whoami", timeout=2).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.1)

    @property
    def ws_url(self) -> str:
        """ws://127.0.0.1:PORT."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """The page origin the server allows."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Redis:
    """A throwaway redis-server on a free loopback port."""

    def __init__(self, work: pathlib.Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Stop it."""
        self.proc.terminate()
        self.proc.wait(10)


# -- scenarios -------------------------------------------------------------------------------------


def progress(text: str) -> None:
    """One line on stderr."""
    print(f"resume_bench: {text}", file=sys.stderr, flush=True)


def summarize(clients: list[dict], sent: set[int]) -> dict:
    """Delivered / sent, out of order and duplicates over ``clients`` (every one expected every message)."""
    delivered = out_of_order = duplicates = 0
    for client in clients:
        seen: set[int] = set()
        high = -1
        for seq in client["seqs"]:
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            if seq < high:
                out_of_order += 1
            high = max(high, seq)
        delivered += len(seen & sent)
    expected = len(sent) * len(clients)
    return {
        "clients": len(clients),
        "delivered": delivered,
        "expected": expected,
        "delivered_percent": round(100.0 * delivered / expected, 3) if expected else None,
        "out_of_order": out_of_order,
        "duplicates": duplicates,
        "connects": sum(c["connects"] for c in clients),
        "refused": sum(c["refused"] for c in clients),
        "gaps_resumed": sum(c["gaps"] for c in clients),
        "dropped_duplicates": sum(c["dropped_duplicates"] for c in clients),
        "continuity_lost": sum(c["continuity_lost"] for c in clients),
    }


def run_scenario(
    name: str,
    client_urls: list[str],
    publish_urls: list[str],
    args: argparse.Namespace,
    halfway=None,
) -> dict:
    """Resume and plain clients on ``client_urls``, the publisher on ``publish_urls``; ``halfway()`` at mid-run."""
    progress(f"({name}) {args.clients} resume + {args.clients} plain clients, {args.rate}/s for {args.seconds}s")
    kinds = {kind: ClientProcess(kind, args.clients, client_urls, ORIGIN) for kind in ("resume", "plain")}
    try:
        for clients in kinds.values():
            clients.wait_ready()
        time.sleep(0.5)  # plain clients register right after their handshake
        publisher = Publisher(publish_urls, ORIGIN, args.rate, args.seconds)
        publisher.start()
        extra = {}
        if halfway is not None:
            time.sleep(args.seconds / 2)
            extra = halfway() or {}
        publisher.join()
        time.sleep(args.settle)
        logs = {kind: clients.finish() for kind, clients in kinds.items()}
    finally:
        for clients in kinds.values():
            clients.kill()
    if args.workdir:
        (pathlib.Path(args.workdir) / f"clients-{name.split(':')[0]}.json").write_text(json.dumps(logs))
    received = {seq for client_logs in logs.values() for client in client_logs for seq in client["seqs"]}
    sent = publisher.acked | received
    result = {
        "sent": len(sent),
        "attempted": publisher.attempted,
        "publisher_reconnects": publisher.reconnects,
        **extra,
    }
    for kind, client_logs in logs.items():
        result[kind] = summarize(client_logs, sent)
    return result


def scenario_links(project: pathlib.Path, work: pathlib.Path, args: argparse.Namespace) -> dict:
    """(a) every client's link cut every ``--cut-every`` seconds by the proxy."""
    server = Server(project, work, "links", {"WS_HISTORY_PATH": str(work / "links.sqlite3")})
    proxy = CuttingProxy(server.port, args.cut_every)
    try:
        result = run_scenario("a: link cuts", [f"ws://127.0.0.1:{proxy.port}"], [server.ws_url], args)
        result["links_cut"] = proxy.cuts
    finally:
        proxy.close()
        server.stop()
    return result


def scenario_restart(project: pathlib.Path, work: pathlib.Path, args: argparse.Namespace) -> dict:
    """(b) SIGHUP halfway: the listening socket passes to a new process, the old one drains."""
    env = {"WS_HISTORY_PATH": str(work / "restart.sqlite3"), "WS_DRAIN_SECONDS": str(args.drain)}
    server = Server(project, work, "restart", env)

    def restart() -> dict:
        progress("(b) SIGHUP")
        server.proc.send_signal(signal.SIGHUP)
        return {"sighup": True}

    try:
        result = run_scenario("b: SIGHUP restart", [server.ws_url], [server.ws_url], args, restart)
        log = server.log.read_text(errors="replace")
        result["restarted"] = "restarted: process" in log
        result["server_alive"] = server.proc.poll() is None
    finally:
        server.stop()
    result["refused_connections"] = result["resume"]["refused"] + result["plain"]["refused"]
    return result


def scenario_failover(project: pathlib.Path, work: pathlib.Path, args: argparse.Namespace) -> dict:
    """(c) two nodes joined through Redis; SIGKILL one halfway, its clients move to the other."""
    redis = Redis(work)
    env = {"WS_ADAPTER": "redis", "WS_REDIS_URL": redis.url, "SESSION_BACKEND": "file"}
    nodes = [Server(project, work, f"node{i}", env) for i in (1, 2)]
    killed, survivor = nodes

    def kill() -> dict:
        progress(f"(c) kill -9 node 1 (pid {killed.proc.pid})")
        killed.proc.kill()
        return {"killed_pid": killed.proc.pid}

    try:
        urls = [node.ws_url for node in nodes]
        result = run_scenario("c: kill -9 of one of two nodes", urls, [survivor.ws_url], args, kill)
    finally:
        for node in nodes:
            node.stop()
        redis.stop()
    return result


def history_cost(project: pathlib.Path, work: pathlib.Path, args: argparse.Namespace) -> dict:
    """Server CPU per delivered message in a fan-out, and RSS per idle connection, history on and off."""
    import metrics_cost
    from benchlib import load
    from benchlib.plan import Plan

    variants = {
        "history off": {"BENCH_HISTORY": "0"},
        "history on": {"BENCH_HISTORY": "1", "WS_HISTORY_PATH": str(work / "cost.sqlite3")},
    }
    plan = Plan.quick() if args.subscribers < 100 else Plan()
    sources = load.SourceAddresses()
    servers = {name: metrics_cost.start(project, work, name, extra) for name, extra in variants.items()}
    result: dict = {"subscribers": args.subscribers, "idle": args.idle, "variants": {}}
    try:
        progress("history cost")
        measured = metrics_cost.side_by_side(servers, plan, sources, args.subscribers, args.rounds, args.idle)
        for name, server in servers.items():
            entry = measured[name]
            opened, per_conn = entry["idle_open"], entry["bytes_per_idle_conn"]
            result["variants"][name] = {
                "cpu_us_per_msg": round(entry["cpu_us_per_msg"], 3) if entry["cpu_us_per_msg"] else None,
                "rounds": entry["rounds"],
                "idle_open": opened,
                "bytes_per_idle_conn": round(per_conn) if per_conn is not None else None,
                "bytes_per_idle_v1_conn": v1_idle_bytes(server, args.idle),
            }
    finally:
        for server in servers.values():
            server.stop()
    off, on = result["variants"].get("history off", {}), result["variants"].get("history on", {})
    if off.get("cpu_us_per_msg") and on.get("cpu_us_per_msg"):
        result["cpu_overhead_percent"] = round((on["cpu_us_per_msg"] / off["cpu_us_per_msg"] - 1) * 100, 1)
    if off.get("bytes_per_idle_conn") is not None and on.get("bytes_per_idle_conn") is not None:
        result["bytes_overhead_per_conn"] = on["bytes_per_idle_conn"] - off["bytes_per_idle_conn"]
    if off.get("bytes_per_idle_v1_conn") is not None and on.get("bytes_per_idle_v1_conn") is not None:
        result["v1_bytes_overhead_per_conn"] = on["bytes_per_idle_v1_conn"] - off["bytes_per_idle_v1_conn"]
    return result


def v1_idle_bytes(server, count: int) -> int | None:
    """Server RSS per idle ``asok-green.v1`` connection to ``/feed``, ``count`` of them held by a client process."""
    from benchlib import procstat

    before = procstat.rss_bytes(server.pid)
    clients = ClientProcess("hold", count, [server.ws_url("")], ORIGIN)
    try:
        clients.wait_ready(timeout=180)
        procstat.wait_idle(server.pid)
        after = procstat.rss_bytes(server.pid)
        clients.finish()
    finally:
        clients.kill()
    return round((after - before) / count)


SCENARIOS = {"a": scenario_links, "b": scenario_restart, "c": scenario_failover, "cost": history_cost}


# -- the report ------------------------------------------------------------------------------------


#: How the section's numbers are made, printed under them.
METHOD = """\
How it is measured: every client connects to `/feed` of a generated Asok project (DEBUG off) served by
`asok serve --gevent`; a publisher in the script sends `<seq>:<padding>` to `/pub` at the given rate, which
broadcasts it to `/feed` (history of 5,000 messages). Resume clients follow the contract's client rule
(deliver offset last + 1, drop older, on a gap close and reconnect with `?asok_since=`); plain clients
just reconnect. A message counts as sent when the publisher got its acknowledgement or any client got it
(the one in flight when the publisher's own link is closed by a restart is not resent). "delivered / sent"
counts distinct messages each client handed to its application; "duplicates" a message handed over twice;
"out of order" one older than one handed over before it; "reconnections" connections after the first.
(a) goes through a TCP proxy in the script that resets each link (both sides) 2 s after it opened.
(b) sends SIGHUP to the process `asok serve --gevent` started, halfway; `WS_DRAIN_SECONDS` is 10 (the
default), so the old process closes its sockets with 1012 over 10 s while the new one already serves;
"refused" counts every connection attempt refused by TCP or answered with an HTTP error.
(c) starts two nodes on one Redis (history in Redis Streams), the clients spread over both, the
publisher on the second; halfway the first is killed with SIGKILL and its clients move to the second.
History's cost: two servers side by side, `/room` with history (SQLite) and without, 1,000 plain
subscribers, alternating fan-out rounds (median server CPU per delivered message); then idle
connections held open and the server's RSS growth divided by their number."""


def markdown(result: dict) -> str:
    """The "Resume" section of BENCHMARKS.md."""
    machine = result["machine"]
    lines = [
        "## Resume",
        "",
        "Resume clients against plain clients, and what keeping history costs: `scripts/resume_bench.py` "
        "(`--seconds`, `--clients`, `--rate`, `--scenarios a,b,c,cost` to shorten it; "
        "`tests/test_resume_bench_smoke.py` runs it tiny).",
        "",
        f"`{result['command']}` on {result['date']}: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']} "
        f"(load average {machine['load_before']:.1f} before the run; the machine is shared).",
        "",
        f"{result['clients']} resume clients (`asok-green.v1`) and {result['clients']} plain clients in the same run, "
        f"each kind in a process of its own; {result['rate']} broadcasts/s for {result['seconds']} s per scenario.",
        "",
        "| scenario | clients | delivered / sent | out of order | duplicates | reconnections | continuity lost |",
        "|---|---|---|---|---|---|---|",
    ]
    titles = {
        "a": f"(a) link cut every {result['cut_every']} s",
        "b": "(b) SIGHUP restart, SQLite store",
        "c": "(c) kill -9 of one of two Redis nodes",
    }
    for key, title in titles.items():
        scenario = result["scenarios"].get(key)
        if not scenario:
            continue
        for kind in ("resume", "plain"):
            s = scenario[kind]
            lines.append(
                f"| {title} | {kind} | {s['delivered']:,} / {s['expected']:,} ({s['delivered_percent']}%) | "
                f"{s['out_of_order']} | {s['duplicates']} | {s['connects'] - s['clients']} | {s['continuity_lost']} |"
            )
    b = result["scenarios"].get("b")
    if b:
        lines += ["", f"Connections refused during (b): **{b['refused_connections']}**."]
    cost = result["scenarios"].get("cost")
    if cost:
        on, off = cost["variants"].get("history on", {}), cost["variants"].get("history off", {})
        lines += [
            "",
            f"History's cost, two servers side by side ({cost['subscribers']:,} plain subscribers of a path "
            f"that keeps history or not, SQLite store; idle memory at {cost['idle']:,} connections):",
            "",
            "| | server CPU per delivered message | RSS per idle plain connection | RSS per idle v1 connection |",
            "|---|---|---|---|",
            f"| history off | {off.get('cpu_us_per_msg')} µs | {off.get('bytes_per_idle_conn')} B |"
            f" {off.get('bytes_per_idle_v1_conn')} B |",
            f"| history on | {on.get('cpu_us_per_msg')} µs | {on.get('bytes_per_idle_conn')} B |"
            f" {on.get('bytes_per_idle_v1_conn')} B |",
            f"| difference | {cost.get('cpu_overhead_percent')}% | {cost.get('bytes_overhead_per_conn')} B |"
            f" {cost.get('v1_bytes_overhead_per_conn')} B |",
        ]
    lines += ["", METHOD]
    return "\n".join(lines) + "\n"


def write_section(path: pathlib.Path, section: str) -> None:
    """Replace the ``## Resume`` section of ``path`` with ``section`` (or append it)."""
    text = path.read_text() if path.exists() else ""
    start = text.find("## Resume\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``clients`` is the client process' own)."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["clients"]:
        parser = argparse.ArgumentParser(prog="resume_bench.py clients")
        parser.add_argument("command")
        parser.add_argument("kind", choices=["resume", "plain", "hold"])
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--urls", required=True)
        parser.add_argument("--origin", required=True)
        parser.add_argument("--path", default="/feed")
        return parser.parse_args(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="publishing time per scenario (default 60)")
    parser.add_argument("--clients", type=int, default=100, help="resume clients, and as many plain ones")
    parser.add_argument("--rate", type=float, default=20.0, help="broadcasts per second")
    parser.add_argument("--cut-every", type=float, default=2.0, help="(a): seconds each link lives")
    parser.add_argument("--drain", type=float, default=10.0, help="(b): WS_DRAIN_SECONDS of the restarted process")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds the clients get after the last broadcast")
    parser.add_argument("--subscribers", type=int, default=1000, help="fan-out size for history's CPU cost")
    parser.add_argument("--rounds", type=int, default=20, help="fan-out rounds per variant")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for memory per connection")
    parser.add_argument("--scenarios", default="a,b,c,cost", help="which of a,b,c,cost to run")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--report", help="write the Resume section into this Markdown file")
    parser.add_argument("--workdir", help="where the project and logs go (default: a temp dir, removed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print the JSON and the Markdown section."""
    args = parse_args(argv)
    if getattr(args, "command", None) == "clients":
        asyncio.run(clients_main(args))
        return 0
    from benchlib import machine
    from benchlib.project import BENCH_ROUTES, make_project

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="asok-resume-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    project = make_project(work / "project", extra_wsgi=BENCH_ROUTES + FEED_ROUTES, debug=False)
    result: dict = {
        "command": "python scripts/resume_bench.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.describe(),
        "clients": args.clients,
        "rate": args.rate,
        "seconds": args.seconds,
        "cut_every": args.cut_every,
        "scenarios": {},
    }
    try:
        for key in args.scenarios.split(","):
            result["scenarios"][key] = SCENARIOS[key](project, work, args)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1, default=str))
    section = markdown(result)
    print(section)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    if args.report:
        write_section(pathlib.Path(args.report), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
