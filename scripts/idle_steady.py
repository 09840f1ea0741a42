"""Idle memory never-spoke and steady, with the allocators' own figures: for finding where memory goes.

    python scripts/idle_steady.py --baseline /tmp/main-before       # 10,000 connections, 3 rounds
    python scripts/idle_steady.py --quick                           # a few dozen, seconds
    python scripts/idle_steady.py --diagnose [--trim] [--tracemalloc DIR]

The measurement is benchlib/steady.py's, as ``python scripts/bench.py --idle-only``
runs it (which writes the figures into BENCHMARKS.md); this prints JSON only.
``--baseline DIR`` adds the asok_green package of DIR (through PYTHONPATH) as
the "before" build. ``--diagnose`` runs the servers through
scripts/peers/asok_green_variant.py, which writes glibc's ``mallinfo2`` and
pymalloc's arena figures at the end of each phase; ``--trim`` adds the RSS
after ``malloc_trim(0)``, and ``--tracemalloc DIR`` a tracemalloc snapshot per
phase (compare them with ``tracemalloc.Snapshot.load(...).compare_to``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable

from benchlib import load, machine
from benchlib.project import make_bench_project
from benchlib.servers import PEERS, ServerProcess
from benchlib.steady import SteadyPlan, Variant, compare


def snapshots(stats: pathlib.Path, traces: pathlib.Path | None) -> Callable[[ServerProcess], Callable[[str], dict]]:
    """A factory of ``snapshot`` for :func:`benchlib.steady.measure`, through the variant runner's signals.

    SIGUSR2 appends a line of allocator figures to ``stats``; with ``traces``,
    SIGUSR1 first writes a tracemalloc snapshot there (its path is kept with the figures).
    """

    def for_server(server: ServerProcess) -> Callable[[str], dict]:
        taken = [0]

        def snapshot(phase: str) -> dict:
            extra = {}
            if traces is not None:
                target = traces / f"snapshot-{taken[0]}.pickle"
                taken[0] += 1
                os.kill(server.pid, signal.SIGUSR1)
                if _wait(target.exists):
                    extra["tracemalloc"] = str(target)
            before = _lines(stats)
            os.kill(server.pid, signal.SIGUSR2)
            _wait(lambda: len(_lines(stats)) > len(before))
            after = _lines(stats)
            return {**(json.loads(after[-1]) if len(after) > len(before) else {}), **extra}

        return snapshot

    return for_server


def _lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait(check: Callable[[], bool], timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print it as JSON (and write it with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few dozen connections, 1 s keep-alive interval")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hold", type=float, help="seconds of the held phase")
    parser.add_argument("--spread", type=float, help="seconds over which the clients send their message")
    parser.add_argument("--baseline", help="a source tree whose asok_green runs as the 'before' build")
    parser.add_argument("--only-baseline", action="store_true", help="measure the baseline build alone")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for every server")
    parser.add_argument("--diagnose", action="store_true", help="allocator figures at the end of each phase")
    parser.add_argument("--trim", action="store_true", help="with --diagnose: malloc_trim(0) after each")
    parser.add_argument("--tracemalloc", metavar="DIR", help="with --diagnose: a tracemalloc snapshot per phase")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    plan = SteadyPlan.quick() if args.quick else SteadyPlan()
    if args.connections:
        plan.connections = args.connections
    if args.hold is not None:
        plan.hold_seconds = args.hold
    if args.spread is not None:
        plan.say_spread = args.spread
    common = dict(item.split("=", 1) for item in args.env)
    if args.quick:
        common = {"WS_PING_INTERVAL": "1", "WS_PING_TIMEOUT": "5", **common}
    builds: dict[str, dict[str, str]] = {}
    if not args.only_baseline:
        builds["asok_green"] = dict(common)
    if args.baseline:
        builds["before"] = {**common, "PYTHONPATH": str(pathlib.Path(args.baseline).resolve())}
    work = pathlib.Path(tempfile.mkdtemp(prefix="asok-idle-steady-"))
    traces = pathlib.Path(args.tracemalloc).resolve() if args.tracemalloc else None

    def variant(name: str, round_id: int) -> Variant:
        if not args.diagnose:
            return None, None
        tag = f"{name.replace(' ', '-')}-{round_id}"
        stats = work / f"malloc-{tag}.jsonl"
        command = [sys.executable, str(PEERS / "asok_green_variant.py"), "--malloc-stats", str(stats)]
        command += ["--trim"] if args.trim else []
        trace_dir = traces / tag if traces else None
        command += ["--tracemalloc", str(trace_dir)] if trace_dir else []
        return command, snapshots(stats, trace_dir)

    try:
        project = make_bench_project(work / "project")
        result = compare(builds, plan, args.rounds, project, work, load.SourceAddresses(), variant)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"] = machine.describe()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
