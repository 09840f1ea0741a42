"""Benchmark asok_green against its peers, every one under the same load in one run.

    python scripts/bench.py                      # the full run (30 minutes or more), writes BENCHMARKS.md
    python scripts/bench.py --quick --output /tmp/b.md --chart /tmp/b.png   # seconds, a few dozen sockets
    python scripts/bench.py --latency-only --max-clients 8000 --step 1000 --seconds 3   # a few minutes
    python scripts/bench.py --idle-only --baseline /tmp/main-before   # idle memory, never spoke and steady
    python scripts/bench.py --hundred-k          # the full run plus 100,000 idle connections (several workers)

Peers: asok_green (``asok serve --gevent`` on a generated Asok project), Asok's
threaded ``WebSocketServer``, bare gevent-websocket, websockets (asyncio),
uvicorn (websockets and wsproto backends), aiohttp, picows, granian and
socketify (uWebSockets); the others live in scripts/peers/ (their packages: the
``bench`` extra of setup.cfg; a peer not installed is reported, not run). Each is
started in turn, measured with load from separate scripts/loadgen.py processes
on 127.0.0.x, and stopped. The results are printed as a table and written to
BENCHMARKS.md (with a PNG chart) and as JSON next to it, with every row's ratios
to the best peer of that row and the floor of this machine (benchlib/floor.c:
the send system calls of a fan-out and of a handshake, alone).

``--hundred-k`` adds 100,000 idle connections (benchlib/hundredk.py): asok_green's
``--workers`` on Redis, then the best peer of the idle-memory row the same way.

Latency at scale (benchlib/shootout.py) is the websocket-shootout's broadcast
round-trip test on every peer; ``--latency-only`` runs just that and updates
its section of the report (and a chart of its own).

Idle memory as users see it (benchlib/steady.py): 10,000 connections that never
spoke, then once every one has answered a keep-alive ping and sent and received
one message, with the RSS peak while keep-alive rounds run and the CPU of
keeping them alive; asok_green side by side with ``--baseline``'s tree (for
instance a ``git worktree`` of main before a change). ``--idle-only`` runs just
that and updates its section of the report.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import signal
import sys
import tempfile
import time

import bench_cluster
import metrics_cost
from benchlib import (
    encode_check,
    experiment,
    floor,
    latency_report,
    load,
    machine,
    modes,
    report,
    shootout,
    steady,
    steady_report,
)
from benchlib.chart import draw, draw_latency
from benchlib.plan import Plan
from benchlib.project import make_bench_project
from benchlib.rates import rates_phase
from benchlib.scenario import PeerRun, progress
from benchlib.servers import PEER_LIST, PEERS_BY_NAME, baseline_peer

REPO = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short runs (smoke test)")
    parser.add_argument("--peers", help=f"comma-separated subset of: {','.join(PEERS_BY_NAME)}")
    parser.add_argument("--sizes", help="idle connection levels, e.g. 1000,5000,10000,19000")
    parser.add_argument("--fanout", help="fan-out subscriber counts (among --sizes), e.g. 1000,10000")
    parser.add_argument("--http-idle", type=int, help="idle WebSockets held while wrk runs (one of --sizes)")
    parser.add_argument("--echo-seconds", type=float)
    parser.add_argument("--http-seconds", type=float)
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles of asok_green")
    parser.add_argument("--no-experiment", action="store_true", help="skip the idle-memory experiment")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (benchlib/floor.c)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the cross-node fan-out (bench_cluster.py)")
    parser.add_argument("--no-metrics-cost", action="store_true", help="skip the metrics cost (metrics_cost.py)")
    hundred = parser.add_argument_group("100,000 idle connections (several server processes)")
    hundred.add_argument("--hundred-k", action="store_true", help="add the 100,000 idle connections row")
    hundred.add_argument("--hundred-k-only", action="store_true", help="run only that row; update its section")
    hundred.add_argument("--hundred-k-connections", type=int, default=100_000, help="connections (100000)")
    hundred.add_argument("--hundred-k-workers", type=int, default=6, help="server processes (6)")
    hundred.add_argument("--hundred-k-peer", help="the peer tried the same way (default: best idle memory)")
    latency = parser.add_argument_group("latency at scale (broadcast round trips)")
    latency.add_argument("--latency-only", action="store_true", help="run only the latency-at-scale test")
    latency.add_argument("--no-latency", action="store_true", help="skip the latency-at-scale test")
    latency.add_argument("--max-clients", type=int, help="largest client count (default 20000)")
    latency.add_argument("--step", type=int, help="clients added per step (default 500)")
    latency.add_argument("--seconds", type=float, help="seconds of rounds per step (default 4)")
    latency.add_argument("--senders", type=int, help="broadcast requests per round, all client processes (4)")
    latency.add_argument("--latency-passes", type=int, help="passes over every peer; the median is reported (2)")
    latency.add_argument("--no-pin", action="store_true", help="do not pin the server and the clients to cores")
    idle = parser.add_argument_group("idle memory, never spoke and steady")
    idle.add_argument("--idle-only", action="store_true", help="run only the steady idle-memory comparison")
    idle.add_argument("--no-steady", action="store_true", help="skip the steady idle-memory comparison")
    idle.add_argument("--baseline", help="a source tree whose asok_green is measured beside this one ('before')")
    idle.add_argument("--steady-rounds", type=int, help="rounds per build (default 3)")
    idle.add_argument("--steady-connections", type=int, help="idle connections (default 10000)")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="the Markdown report")
    parser.add_argument(
        "--chart", help="the PNG chart (default docs/bench.png; docs/bench-latency.png with --latency-only)"
    )
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--workdir", help="where the project, logs and profiles go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite the report and chart from a --json file (or, comma-separated, several "
        "--latency-only runs, pooled)",
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan the options ask for."""
    plan = Plan.quick() if args.quick else Plan()
    if args.sizes:
        plan.sizes = [int(n) for n in args.sizes.split(",")]
    if args.fanout:
        plan.fanout = [int(n) for n in args.fanout.split(",")]
    if args.http_idle:
        plan.http_idle = args.http_idle
    if args.echo_seconds:
        plan.echo_seconds = args.echo_seconds
    if args.http_seconds:
        plan.http_seconds = args.http_seconds
    if args.no_profile:
        plan.profile = False
    if args.no_experiment:
        plan.experiment = False
    plan.check()
    return plan


def make_latency_plan(args: argparse.Namespace) -> shootout.LatencyPlan:
    """The latency-at-scale plan the options ask for (a few dozen clients with ``--quick``)."""
    plan = (
        shootout.LatencyPlan(max_clients=40, step=20, seconds=1.0, passes=1, open_timeout=30.0)
        if args.quick
        else shootout.LatencyPlan()
    )
    for option, name in (
        ("max_clients", "max_clients"),
        ("step", "step"),
        ("seconds", "seconds"),
        ("senders", "senders"),
        ("latency_passes", "passes"),
    ):
        value = getattr(args, option)
        if value:
            setattr(plan, name, value)
    plan.pin = not args.no_pin
    if plan.step > plan.max_clients:
        raise SystemExit("bench: --step must not exceed --max-clients")
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every peer ran (a peer's problems are reported, not fatal)."""
    args = parse_args(argv)
    if args.render:
        loaded = [json.loads(pathlib.Path(path).read_text()) for path in args.render.split(",")]
        run = loaded[0] if len(loaded) == 1 else merge_latency_runs(loaded)
        if "peers" not in run:  # runs of --latency-only
            chart = pathlib.Path(args.chart or REPO / "docs" / "bench-latency.png")
            write_latency_report(run, pathlib.Path(args.output), chart)
            print(latency_report.text(run["latency"]))
            return 0
        write_report(run, pathlib.Path(args.output), pathlib.Path(args.chart or REPO / "docs" / "bench.png"))
        print(report.table(run))
        return 0
    # SIGTERM unwinds like Ctrl-C, so every server and load process started so far is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    prepare_outputs(args)
    peers = [PEERS_BY_NAME[name] for name in args.peers.split(",")] if args.peers else list(PEER_LIST)
    missing = {peer.name: peer.installed() for peer in peers if peer.installed()}
    for name, why in missing.items():
        progress(f"{PEERS_BY_NAME[name].label}: not run: {why}")
    absent = [peer for peer in peers if peer.name in missing]
    peers = [peer for peer in peers if peer.name not in missing]
    if args.baseline and not args.idle_only:
        peers.insert(1, baseline_peer(args.baseline))
    latency_plan = None if args.no_latency else make_latency_plan(args)
    if args.latency_only:
        return latency_only(args, argv, peers, latency_plan)
    if args.idle_only:
        return idle_only(args, argv)
    if args.hundred_k_only:
        return modes.hundred_k_only(args, argv)
    plan = make_plan(args)
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="asok-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    progress(f"work dir {work}; peers: {', '.join(p.label for p in peers)}; sizes {plan.sizes}")
    project = make_bench_project(work / "project")
    progress("bench project ready (Asok project, seeded SQLite users)")
    sources = load.SourceAddresses()
    runs = [PeerRun(peer, plan, project, work, sources) for peer in peers]
    rates_phase(runs, plan)
    results = [run.run() for run in runs]
    results += [not_run(peer, missing[peer.name]) for peer in absent]
    latency = None
    if latency_plan is not None:
        latency = shootout.run(peers, latency_plan, project, work, sources)
        if plan.profile:
            shootout.profile_if_missed(latency, peers, latency_plan, project, work, sources)
    floor_result = None
    if not args.no_floor:
        progress("the floor: send system calls alone (benchlib/floor.c)")
        floor_result = floor.measure(work, plan.fanout, plan.handshakes)
    hundred = modes.hundred_k_phase(args, peers, results, project, work, sources) if args.hundred_k else None
    idle_steady = None if args.no_steady else steady_phase(args, project, work, sources)
    memory = experiment.run(plan, project, work, sources) if plan.experiment else None
    cluster = metrics = None
    if not args.no_cluster:
        progress("cross-node fan-out: asok_green with 1 worker, then 2 workers through Redis")
        cluster = bench_cluster.run(quick=args.quick)
    if not args.no_metrics_cost:
        progress("metrics cost: asok_green with Prometheus metrics off and on")
        metrics = metrics_cost.run(quick=args.quick)
    elapsed = time.monotonic() - started
    run = {
        "machine": machine.describe(),
        "plan": plan.__dict__,
        "peers": results,
        "latency": latency,
        "floor": floor_result,
        "hundred_k": hundred,
        "steady": idle_steady,
        "memory_experiment": memory,
        "cluster": cluster,
        "metrics_cost": metrics,
        "encode_check": encode_check.check(),
        "seconds": round(elapsed, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    (work / "results.json").write_text(json.dumps(run, indent=1, default=str))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    output, chart = pathlib.Path(args.output), pathlib.Path(args.chart or REPO / "docs" / "bench.png")
    write_report(run, output, chart)
    print(report.table(run))
    progress(f"done in {elapsed:.0f}s: {output}, {chart}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def latency_only(
    args: argparse.Namespace, argv: list[str] | None, peers: list, plan: shootout.LatencyPlan | None
) -> int:
    """Run only the latency-at-scale test; update its section of the report and draw its own chart."""
    if plan is None:
        raise SystemExit("bench: --latency-only and --no-latency exclude each other")
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="asok-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    project = make_bench_project(work / "project")
    latency = shootout.run(peers, plan, project, work, load.SourceAddresses())
    if not args.no_profile:
        shootout.profile_if_missed(latency, peers, plan, project, work, load.SourceAddresses(first=100))
    elapsed = time.monotonic() - started
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    run = {"machine": machine.describe(), "latency": latency, "seconds": round(elapsed, 1), "date": date}
    run["command"] = command
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    output = pathlib.Path(args.output)
    chart = pathlib.Path(args.chart or REPO / "docs" / "bench-latency.png")
    write_latency_report(run, output, chart)
    print(latency_report.text(latency))
    progress(f"done in {elapsed:.0f}s: {output}, {chart}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def not_run(peer, why: str) -> dict:
    """The results of a peer that could not run: every row of its column says why."""
    return {"name": peer.name, "label": peer.label, "notes": peer.notes, "problems": [why], "unavailable": why}


def prepare_outputs(args: argparse.Namespace) -> None:
    """Create the folders of ``--output``, ``--chart`` and ``--json`` before the run, so its end cannot fail there."""
    for path in (args.output, args.chart, args.json):
        if path:
            pathlib.Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)


def steady_phase(args: argparse.Namespace, project: pathlib.Path, work: pathlib.Path, sources) -> dict:
    """asok_green (and ``--baseline``'s tree as ``before``) through benchlib/steady.py, in turns."""
    plan = steady.SteadyPlan.quick() if args.quick else steady.SteadyPlan()
    if args.steady_connections:
        plan.connections = args.steady_connections
    rounds = args.steady_rounds or (1 if args.quick else 3)
    # --quick: a keep-alive interval of a second, so that the rounds take seconds too.
    common = {"WS_PING_INTERVAL": "1", "WS_PING_TIMEOUT": "5"} if args.quick else {}
    builds = {"asok_green": dict(common)}
    if args.baseline:
        builds["before"] = {**common, "PYTHONPATH": str(pathlib.Path(args.baseline).resolve())}
    progress(f"idle memory never spoke and steady: {', '.join(builds)}, {plan.connections:,} connections")
    return steady.compare(builds, plan, rounds, project, work, sources)


def idle_only(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Run only the steady idle-memory comparison; update its section of the report."""
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="asok-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    project = make_bench_project(work / "project")
    result = steady_phase(args, project, work, load.SourceAddresses())
    elapsed = time.monotonic() - started
    m = machine.describe()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    run = {"machine": m, "steady": result, "seconds": round(elapsed, 1), "date": date, "command": command}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    note = (
        f"Measured on its own (the main table above is the earlier full run) {date} by `{command}` in "
        f"{elapsed:.0f} s, on {m['cores']} cores ({m['cpu']}), Python {m['python']}, load average "
        f"{m['load_before']:.2f} at the start."
    )
    output = pathlib.Path(args.output)
    existing = output.read_text() if output.exists() else "# Benchmarks\n"
    output.write_text(steady_report.replace_section(existing, steady_report.section(result, note)))
    print(steady_report.text(result))
    progress(f"done in {elapsed:.0f}s: {output}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def write_latency_report(run: dict, output: pathlib.Path, chart: pathlib.Path) -> None:
    """The latency section of ``output`` (replaced, or added to the earlier full run's report) and its chart.

    ``run`` is one ``--latency-only`` run or several merged by :func:`merge_latency_runs`.
    """
    latency, m = run["latency"], run["machine"]
    chart.parent.mkdir(parents=True, exist_ok=True)
    draw_latency(latency, chart, run["date"])
    runs = run.get("runs") or [_run_facts(run)]
    measured = "; ".join(
        f"{r['date']} by `{r['command']}` in {r['seconds']:.0f} s (load average {r['load_before']:.2f} at the "
        f"start, {r['load_after']:.2f} at the end"
        + (f", some task waiting for a CPU {r['cpu_pressure']:.0%} of its last 5 minutes" if r["cpu_pressure"] else "")
        + ")"
        for r in runs
    )
    note = (
        f"Measured on its own (the rest of this file is the earlier full run), on {m['cores']} cores ({m['cpu']}), "
        f"Python {m['python']}, websockets {m['versions'].get('websockets')}, gevent {m['versions'].get('gevent')}: "
        f"{measured}. The machine is shared: other people's work competes for both cores (CPU pressure from "
        "/proc/pressure/cpu)."
    )
    if len(runs) > 1:
        note += f" The {len(runs)} runs' passes are pooled: every figure below is the median over all of them."
    section = latency_report.section(latency, _relative(chart, output.parent), note)
    existing = output.read_text() if output.exists() else "# Benchmarks\n"
    output.write_text(latency_report.replace_section(existing, section))


def _run_facts(run: dict) -> dict:
    latency = run["latency"]
    return {
        "date": run["date"],
        "command": run["command"],
        "seconds": run["seconds"],
        "load_before": run["machine"]["load_before"],
        "load_after": latency["load_after"],
        "cpu_pressure": latency.get("cpu_pressure"),
    }


def merge_latency_runs(runs: list[dict]) -> dict:
    """Several ``--latency-only`` runs as one: their passes pooled, the figures the medians over all passes."""
    first = runs[0]
    latency = shootout.pool([r["latency"] for r in runs])
    return {
        "machine": first["machine"],
        "latency": latency,
        "seconds": sum(r["seconds"] for r in runs),
        "date": runs[-1]["date"],
        "command": " and ".join(r["command"] for r in runs),
        "runs": [_run_facts(r) for r in runs],
    }


def write_report(run: dict, output: pathlib.Path, chart: pathlib.Path) -> None:
    """BENCHMARKS.md and its chart."""
    output.parent.mkdir(parents=True, exist_ok=True)
    chart.parent.mkdir(parents=True, exist_ok=True)
    draw(run, chart)
    earlier = output.read_text() if output.exists() else ""
    output.write_text(report.keep_earlier(report.markdown(run, chart_path=_relative(chart, output.parent)), earlier))


def _relative(path: pathlib.Path, start: pathlib.Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path.resolve())


if __name__ == "__main__":
    sys.exit(main())
