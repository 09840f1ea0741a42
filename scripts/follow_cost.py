"""What a server with the SQLite history store spends holding idle clients that each have a path of their own.

    python scripts/follow_cost.py --baseline /tmp/before    # 20,000 clients on 20,000 paths, two trees
    python scripts/follow_cost.py --publish-rate 20         # while a script appends 20 messages/s
    python scripts/follow_cost.py --quick                   # a few hundred, for a smoke run

The bench project gets ``/p/[id]``, a route that keeps 10 messages of history,
so the server follows the history file for other processes' appends (the
default store on one machine). Each server in turn (this tree, and with
``--baseline DIR`` the asok_green package found in DIR) holds ``--clients``
idle connections, connection k on ``/p/<k>``, opened by loadgen processes of
at most 10,000 connections each on their own 127.0.0.x addresses. Once all are
open and the server has had a moment, its CPU time is read over ``--seconds``:
what it costs to keep that many clients, none of them speaking. With
``--publish-rate R`` another thread of this script appends R messages a second
to ``/p/0`` through ``asok_green.publishing`` meanwhile, as a worker would: the
server then reads the file for every stream with clients after each append.
Printed per server: connections held, CPU in percent of a core, RSS; then the
ratio.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import threading
import time

from benchlib import load, procstat
from benchlib.project import make_bench_project
from benchlib.scenario import progress
from benchlib.steady import start_build

#: Appended to the bench project's wsgi.py: a path of its own per client, with history.
OWN_PATHS = """

@ws.on("/p/[id]", history=10)
def own_path(conn, message):
    ws.broadcast(conn.path, message)
"""

#: Connections one loadgen process opens at most (it may hold 20,000 open files).
PER_PROCESS = 10_000


def hold(port: int, clients: int, sources: load.SourceAddresses, timeout: float) -> tuple[list[load.Loadgen], int]:
    """Open ``clients`` connections, connection k on ``/p/<k>``; the loadgen processes and how many opened."""
    gens, first = [], 0
    while first < clients:
        share = min(PER_PROCESS, clients - first)
        options = ["--count", str(share), "--concurrency", "64", "--origin", f"http://127.0.0.1:{port}"]
        options += ["--paths-from", str(first), "--open-timeout", str(timeout)]
        gens.append(
            load.Loadgen("hold", f"ws://127.0.0.1:{port}/p", *options, source=sources.take(), max_seconds=timeout + 300)
        )
        first += share
    opened = 0
    for gen in gens:
        event = gen.wait("opened", timeout)
        opened += event["open"] if event else 0
    return gens, opened


def publishing(project: pathlib.Path, rate: float, stop: threading.Event) -> None:
    """Append to ``/p/0``'s history ``rate`` times a second until ``stop``, as another process would."""
    from asok_green.history.sqlite_store import DEFAULT_FILE_NAME
    from asok_green.publishing import Publisher

    with Publisher("sqlite", path=str(project / DEFAULT_FILE_NAME)) as publisher:
        sent = 0
        started = time.monotonic()
        while not stop.is_set():
            publisher.publish("/p/0", f"step {sent}")
            sent += 1
            stop.wait(max(0.0, started + sent / rate - time.monotonic()))


def measure(
    project: pathlib.Path, work: pathlib.Path, name: str, env: dict, clients: int, seconds: float, rate: float = 0
) -> dict:
    """One server: hold ``clients`` on paths of their own, then its CPU over ``seconds`` of idleness."""
    server = start_build(project, work, name, env)
    gens: list[load.Loadgen] = []
    stop = threading.Event()
    try:
        progress(f"{name}: opening {clients:,} connections, each on a path of its own")
        gens, opened = hold(server.port, clients, load.SourceAddresses(), timeout=600)
        procstat.wait_idle(server.pid, timeout=10)  # a server that never settles is what is measured
        if rate:
            threading.Thread(target=publishing, args=(project, rate, stop), daemon=True).start()
        before, started = procstat.cpu_seconds(server.pid), time.monotonic()
        time.sleep(seconds)
        cpu = procstat.cpu_seconds(server.pid) - before
        elapsed = time.monotonic() - started
        entry = {"held": opened, "cpu_percent": round(cpu / elapsed * 100, 2), "rss": procstat.rss_bytes(server.pid)}
        progress(f"{name}: {opened:,} held, {entry['cpu_percent']}% of a core, RSS {entry['rss'] / 1e6:.0f} MB")
        return entry
    finally:
        stop.set()
        for gen in gens:
            gen.close()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the servers in turn and print the comparison as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time over which CPU is read")
    parser.add_argument("--baseline", help="a source tree whose asok_green runs as the other server")
    parser.add_argument("--publish-rate", type=float, default=0, help="messages a second appended meanwhile")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    clients, seconds = (300, 3.0) if args.quick else (args.clients, args.seconds)
    work = pathlib.Path(tempfile.mkdtemp(prefix="asok-follow-cost-"))
    try:
        project = make_bench_project(work / "project")
        with open(project / "wsgi.py", "a") as wsgi:
            wsgi.write(OWN_PATHS)
        builds = {"asok_green": {}}
        if args.baseline:
            builds["baseline"] = {"PYTHONPATH": str(pathlib.Path(args.baseline).resolve())}
        result: dict = {"clients": clients, "seconds": seconds, "publish_rate": args.publish_rate, "servers": {}}
        for name, env in builds.items():
            result["servers"][name] = measure(project, work, name, env, clients, seconds, args.publish_rate)
        base, ours = result["servers"].get("baseline"), result["servers"]["asok_green"]
        if base and ours["cpu_percent"] > 0:
            result["baseline_cpu_over_ours"] = round(base["cpu_percent"] / ours["cpu_percent"], 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
