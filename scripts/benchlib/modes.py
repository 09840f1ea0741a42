"""The bench's run of one part alone: 100,000 idle connections.

It updates its own section of BENCHMARKS.md (scripts/bench.py ``--hundred-k-only``);
``hundred_k_phase`` is also the ``--hundred-k`` part of a full run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
import time

from . import field, hundredk, load, machine, sections
from .project import make_bench_project
from .scenario import progress
from .servers import PEERS_BY_NAME


def hundred_k_phase(args: argparse.Namespace, peers: list, results: list[dict], project, work, sources) -> dict:
    """100,000 idle connections: asok_green's workers on Redis, then the best peer of the idle-memory row."""
    choice = args.hundred_k_peer or best_idle_peer(results)
    peer = PEERS_BY_NAME.get(choice) if choice else None
    count = 200 if args.quick else args.hundred_k_connections
    workers = 2 if args.quick else args.hundred_k_workers
    progress(f"{count:,} idle connections: asok_green with {workers} workers on Redis, then {choice or 'no peer'}")
    return hundredk.run(peer, project, work, sources, count, workers)


def hundred_k_only(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Run only the 100,000 idle connections (asok_green, then ``--hundred-k-peer``); update its section."""
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="asok-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    project = make_bench_project(work / "project")
    result = hundred_k_phase(args, [], [], project, work, load.SourceAddresses())
    elapsed = time.monotonic() - started
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    run = {"machine": machine.describe(), "hundred_k": result, "seconds": round(elapsed, 1), "date": date}
    run["command"] = command
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    m = run["machine"]
    section = field.hundred_k_markdown(run) + (
        f"\n\nMeasured on its own {date} by `{command}` in {elapsed:.0f} s, load average {m['load_before']:.2f} "
        "at the start (the machine is shared)."
    )
    output = pathlib.Path(args.output)
    existing = output.read_text() if output.exists() else "# Benchmarks\n"
    output.write_text(sections.replace_section(existing, section))
    print(field.hundred_k_markdown(run))
    progress(f"done in {elapsed:.0f}s: {output}")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def best_idle_peer(results: list[dict]) -> str | None:
    """The peer (not asok_green) with the least memory per idle connection at the largest level it held."""
    best, best_value = None, None
    for result in results:
        if result["name"].startswith("asok_green") or result.get("unavailable"):
            continue
        levels = [lv for lv in (result.get("idle") or {}).get("anonymous", []) if lv.get("per_conn")]
        if not levels or levels[-1]["open"] < 0.98 * levels[-1]["target"]:
            continue
        if best_value is None or levels[-1]["per_conn"] < best_value:
            best, best_value = result["name"], levels[-1]["per_conn"]
    return best
