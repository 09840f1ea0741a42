"""What stream history costs asok_green: the same fan-out with history off and on, in one run.

    python scripts/history_cost.py                      # 1,000 subscribers, 5,000 idle connections
    python scripts/history_cost.py --baseline /tmp/main # and a third server running another tree
    python scripts/history_cost.py --quick              # a few dozen, for a smoke run

``asok serve --gevent`` processes on the bench project run side by side: one
whose ``/room`` keeps no history, one where it keeps 200 messages in the
SQLite store (the default), one with the memory store. Every subscriber is a
plain client (no ``asok-green.v1``): the cost measured is what history adds to
a broadcast (the store's append, the offset, the tail), in alternating rounds
so that load from elsewhere hits each alike:

- server CPU per delivered message in the fan-out to ``--subscribers`` clients
  (median and least of the rounds), and the difference in percent against history off;
- RSS per idle connection at ``--idle`` connections.

``--baseline DIR`` adds a server running the asok_green package found in DIR
(e.g. a checkout from before streams), history off, to show what the v1
support costs connections that do not use it.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

from benchlib import load
from benchlib.plan import Plan
from benchlib.project import make_bench_project
from metrics_cost import run_from_command_line, side_by_side, start

#: Appended to the bench project's wsgi.py: ``BENCH_HISTORY=N`` makes ``/room`` keep N messages.
HISTORY_SWITCH = """
import os as _os

if _os.environ.get("BENCH_HISTORY"):
    ws.keep_history("/room", size=int(_os.environ["BENCH_HISTORY"]))
"""

VARIANTS = {
    "history off": {},
    "history on (sqlite)": {"BENCH_HISTORY": "200"},
    "history on (memory)": {"BENCH_HISTORY": "200", "WS_HISTORY_STORE": "memory"},
}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it (and write JSON with ``--json``)."""
    baseline_help = "a source tree whose asok_green runs as another server (history off)"
    return run_from_command_line(run, __doc__, baseline_help, argv)


def run(
    quick: bool = False, subscribers: int = 1000, rounds: int = 40, idle: int = 5000, baseline: str | None = None
) -> dict:
    """History off and on (and ``baseline``'s tree) side by side: fan-out CPU per message and idle memory."""
    variants = dict(VARIANTS)
    if baseline:
        variants["baseline"] = {"PYTHONPATH": str(pathlib.Path(baseline).resolve())}
    plan = Plan.quick() if quick else Plan()
    if quick:
        subscribers, rounds, idle = 50, 4, 100
    work = pathlib.Path(tempfile.mkdtemp(prefix="asok-history-cost-"))
    sources = load.SourceAddresses()
    project = make_bench_project(work / "project")
    with open(project / "wsgi.py", "a") as wsgi:
        wsgi.write(HISTORY_SWITCH)
    servers = {name: start(project, work, name, extra) for name, extra in variants.items()}
    result: dict = {"subscribers": subscribers, "rounds": rounds, "idle": idle, "variants": {}}
    try:
        result["variants"] = side_by_side(servers, plan, sources, subscribers, rounds, idle)
    finally:
        for server in servers.values():
            server.stop()
    off = result["variants"].get("history off", {})
    for name, entry in result["variants"].items():
        if name == "history off" or not off.get("cpu_us_per_msg") or not entry.get("cpu_us_per_msg"):
            continue
        entry["cpu_vs_history_off_percent"] = (entry["cpu_us_per_msg"] / off["cpu_us_per_msg"] - 1) * 100
        entry["cpu_min_vs_history_off_percent"] = (entry["cpu_us_per_msg_min"] / off["cpu_us_per_msg_min"] - 1) * 100
        if off.get("bytes_per_idle_conn") is not None and entry.get("bytes_per_idle_conn") is not None:
            entry["bytes_per_conn_vs_history_off"] = entry["bytes_per_idle_conn"] - off["bytes_per_idle_conn"]
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
