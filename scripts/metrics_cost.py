"""What Prometheus metrics cost asok_green: the same server with metrics off and on, in one run.

    python scripts/metrics_cost.py                 # 1,000 subscribers, 5,000 idle connections
    python scripts/metrics_cost.py --quick         # a few dozen, for a smoke run

Two ``asok serve --gevent`` processes on the bench project run side by side:
``METRICS_ENABLED=false`` (no timings, Asok's path untouched) and metrics on
(handler and fan-out timings, the families added to ``/metrics``). Measured on
each, in alternating rounds so that load from elsewhere hits both alike:

- server CPU per delivered message in the fan-out to ``--subscribers`` idle clients
  (median of the rounds), and the difference in percent;
- RSS per idle connection at ``--idle`` connections;
- server CPU of one scrape of ``/metrics`` with those connections open (metrics on).

``--baseline DIR`` adds a third server running the asok_green package found in
DIR (e.g. a checkout from before metrics), to show what the always-kept
counters cost too.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Callable

from benchlib import load, procstat
from benchlib.plan import Plan
from benchlib.project import make_bench_project
from benchlib.scenario import progress, warm_up
from benchlib.servers import ServerProcess
from benchlib.steady import start_build

TOKEN = "metrics-cost"
VARIANTS = {
    "metrics off": {"METRICS_ENABLED": "false"},
    "metrics on": {"METRICS_TOKEN": TOKEN},
}


def start(project: pathlib.Path, work: pathlib.Path, name: str, extra: dict[str, str]) -> ServerProcess:
    """``asok serve --gevent`` on the bench project with ``extra`` in its environment."""
    return start_build(project, work, name, extra)


def fanout_round(server: ServerProcess, holders: load.Holders, round_id: int, size: int) -> float | None:
    """One broadcast to every holder: server CPU microseconds per delivered message."""
    control = load.ControlClient(server.port, server.origin)
    try:
        holders.arm(round_id, 1)
        cpu0 = procstat.cpu_seconds(server.pid)
        done = control.broadcast(1, size)
        complete, _ = holders.collect(timeout=60)
        cpu1 = procstat.cpu_seconds(server.pid)
    finally:
        control.close()
    if not done or not complete:
        return None
    return (cpu1 - cpu0) / complete * 1e6


def scrape_cpu(server: ServerProcess, times: int = 20) -> float:
    """Server CPU milliseconds per scrape of ``/metrics``."""
    request = urllib.request.Request(server.http_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    procstat.wait_idle(server.pid)
    cpu0 = procstat.cpu_seconds(server.pid)
    for _ in range(times):
        urllib.request.urlopen(request, timeout=10).read()
    return (procstat.cpu_seconds(server.pid) - cpu0) / times * 1e3


def side_by_side(
    servers: dict[str, ServerProcess],
    plan: Plan,
    sources: load.SourceAddresses,
    subscribers: int,
    rounds: int,
    idle: int,
    while_held: Callable[[str, ServerProcess], dict] | None = None,
) -> dict[str, dict]:
    """Fan-out CPU per delivered message and RSS per idle connection of each server, measured alike.

    ``subscribers`` hold ``/room`` on every server while the fan-out rounds run
    in alternating order; then, server by server, ``idle`` connections are held
    and the RSS growth divided by them. ``while_held(name, server)`` adds to a
    server's entry while its idle connections are still open.
    """
    holders: dict[str, load.Holders] = {}
    entries: dict[str, dict] = {}
    try:
        for name, server in servers.items():
            warm_up(server, plan, sources)
            holders[name] = load.Holders(server.ws_url("/room"), server.origin, sources, most=subscribers)
            holders[name].grow(subscribers, plan.open_timeout)
            procstat.wait_idle(server.pid)
        progress(f"fan-out to {subscribers}: {rounds} alternating rounds")
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for round_id in range(rounds):
            shift = round_id % len(servers)
            order = list(servers)[shift:] + list(servers)[:shift]
            for name in order:
                value = fanout_round(servers[name], holders[name], round_id, plan.message_size)
                if value is not None:
                    cpu[name].append(value)
        for name in servers:
            holders[name].close()
            procstat.wait_idle(servers[name].pid)
        progress(f"idle memory at {idle} connections")
        for name, server in servers.items():
            held = load.Holders(server.ws_url("/room"), server.origin, sources, most=idle)
            before = procstat.rss_bytes(server.pid)
            held.grow(idle, plan.open_timeout)
            procstat.wait_idle(server.pid)
            opened = held.still_open()
            after = procstat.rss_bytes(server.pid)
            entry = entries[name] = {
                "cpu_us_per_msg": statistics.median(cpu[name]) if cpu[name] else None,
                # Load from elsewhere only ever adds CPU time: the least of the rounds is the steadiest.
                "cpu_us_per_msg_min": min(cpu[name]) if cpu[name] else None,
                "rounds": len(cpu[name]),
                "idle_open": opened,
                "bytes_per_idle_conn": (after - before) / opened if opened else None,
            }
            if while_held is not None:
                entry.update(while_held(name, server))
            held.close()
            procstat.wait_idle(server.pid)
    finally:
        for h in holders.values():
            h.close()
    return entries


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it (and write JSON with ``--json``)."""
    return run_from_command_line(run, __doc__, "a source tree whose asok_green runs as a third server", argv)


def run_from_command_line(run: Callable[..., dict], doc: str, baseline_help: str, argv: list[str] | None) -> int:
    """The command line of a side-by-side cost script: ``run`` with its options, the result printed as JSON."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--json")
    parser.add_argument("--baseline", help=baseline_help)
    args = parser.parse_args(argv)
    result = run(args.quick, args.subscribers, args.rounds, args.idle, args.baseline)
    print(json.dumps(result, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def run(
    quick: bool = False, subscribers: int = 1000, rounds: int = 40, idle: int = 5000, baseline: str | None = None
) -> dict:
    """Metrics off and on (and ``baseline``'s tree) side by side: fan-out CPU per message and idle memory."""
    variants = dict(VARIANTS)
    if baseline:
        variants["baseline"] = {"PYTHONPATH": str(pathlib.Path(baseline).resolve()), "METRICS_ENABLED": "false"}
    plan = Plan.quick() if quick else Plan()
    if quick:
        subscribers, rounds, idle = 50, 4, 100
    work = pathlib.Path(tempfile.mkdtemp(prefix="asok-metrics-cost-"))
    sources = load.SourceAddresses()
    project = make_bench_project(work / "project")
    servers = {name: start(project, work, name, extra) for name, extra in variants.items()}
    result: dict = {"subscribers": subscribers, "rounds": rounds, "idle": idle, "variants": {}}

    def scrape_while_held(name: str, server: ServerProcess) -> dict:
        return {"scrape_cpu_ms": scrape_cpu(server)} if name == "metrics on" else {}

    try:
        result["variants"] = side_by_side(servers, plan, sources, subscribers, rounds, idle, scrape_while_held)
    finally:
        for server in servers.values():
            server.stop()
    off, on = result["variants"].get("metrics off", {}), result["variants"].get("metrics on", {})
    if off.get("cpu_us_per_msg") and on.get("cpu_us_per_msg"):
        result["cpu_overhead_percent"] = (on["cpu_us_per_msg"] / off["cpu_us_per_msg"] - 1) * 100
    if off.get("bytes_per_idle_conn") is not None and on.get("bytes_per_idle_conn") is not None:
        result["bytes_overhead_per_conn"] = on["bytes_per_idle_conn"] - off["bytes_per_idle_conn"]
    base = result["variants"].get("baseline", {})
    if base.get("cpu_us_per_msg") and on.get("cpu_us_per_msg"):
        result["cpu_overhead_vs_baseline_percent"] = (on["cpu_us_per_msg"] / base["cpu_us_per_msg"] - 1) * 100
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
