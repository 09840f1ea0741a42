"""The handshake part of scripts/bench.py on its own: asok_green against websockets (asyncio).

    python scripts/handshake_rates.py                    # 5 interleaved rounds, medians and ratios
    python scripts/handshake_rates.py --rounds 7 --profile 4
    python scripts/handshake_rates.py --baseline /tmp/main-tree --echo   # and asok_green from another tree

Both servers are started together, warmed up as bench.py does, then measured in
interleaved rounds (each round visits every server, in alternating order) with
the same loadgen pass as the bench's handshake rounds (``benchlib.rates``):
3,000 connections to ``/echo``, 32 in flight, each opened, upgraded, sent a
close frame and closed. With ``--profile`` py-spy samples asok_green during an
extra pass, and the summary is printed as the bench prints its profiles.
``--baseline DIR`` adds asok_green as found in the source tree DIR (``asok_green@base``),
and ``--echo`` measures the bench's echo rounds first (100 clients, 3 s each).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile

from benchlib import load, machine, procstat
from benchlib.plan import Plan
from benchlib.profiling import Recording
from benchlib.project import make_bench_project
from benchlib.rates import handshake_round
from benchlib.scenario import warm_up
from benchlib.servers import BIN, PEERS_BY_NAME, start_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", default="asok_green,websockets_asyncio", help="comma-separated, first compared")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians reported)")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS", help="py-spy the first peer")
    parser.add_argument("--baseline", metavar="DIR", help="also run asok_green from this source tree")
    parser.add_argument("--echo", action="store_true", help="echo rounds too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure, print rounds, medians and the first peer's ratios to each other peer."""
    args = parse_args(argv)
    plan = Plan()
    names = args.peers.split(",")
    work = pathlib.Path(tempfile.mkdtemp(prefix="asok-handshakes-"))
    sources = load.SourceAddresses()
    servers = {}
    try:
        project = make_bench_project(work / "project")
        for name in names:
            servers[name] = start_server(PEERS_BY_NAME[name], project, work, tag="-handshakes")
        if args.baseline:
            names.append(BASE)
            servers[BASE] = start_server(
                PEERS_BY_NAME["asok_green"], project, work, argv_for=baseline_argv(args.baseline), tag="-base"
            )
        for server in servers.values():
            warm_up(server, plan, sources)
        if args.echo:
            echo_rounds(servers, names, plan, sources, args.rounds)
        rates: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for round_id in range(args.rounds):
            for name in names if round_id % 2 == 0 else names[::-1]:
                got = handshake_round(servers[name], plan, sources)
                rates[name].append(got["rate"])
                if got.get("cpu_us") is not None:
                    cpu[name].append(got["cpu_us"])
                if got.get("failed"):
                    print(f"{name}: {got['failed']} failed {got.get('errors')}", flush=True)
            print(
                f"round {round_id + 1}: "
                + ", ".join(f"{n} {rates[n][-1]:,.0f}/s {cpu[n][-1] if cpu[n] else 0:.0f} us" for n in names),
                flush=True,
            )
        print(f"machine: {machine.describe()}")
        medians = {n: (statistics.median(rates[n]), statistics.median(cpu[n]) if cpu[n] else None) for n in names}
        for name, (rate, us) in medians.items():
            print(f"{name}: median {rate:,.0f} handshakes/s, {us:.0f} us server CPU each; rounds {rates[name]}")
        first = names[0]
        for other in names[1:]:
            rate_ratio = medians[first][0] / medians[other][0]
            cpu_ratio = medians[first][1] / medians[other][1]
            print(f"{first}/{other}: {rate_ratio:.2f}x handshakes/s, {cpu_ratio:.2f}x server CPU per handshake")
        if args.profile:
            server = servers[first]
            procstat.wait_idle(server.pid)
            recording = Recording(server.pid, args.profile, work / "profile-handshakes.txt")
            load.handshakes(
                server.ws_url("/echo"), server.origin, 100_000, plan.handshake_concurrency, args.profile, sources.take()
            )
            print(profile_tables(recording.finish()))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


BASE = "asok_green@base"


def baseline_argv(tree: str):
    """``argv_for`` of asok_green served from the source tree ``tree``."""
    path = str(pathlib.Path(tree).resolve())
    return lambda port: ["env", f"PYTHONPATH={path}", str(BIN / "asok"), "serve", "--gevent", "--port", str(port)]


def echo_rounds(servers: dict, names: list[str], plan: Plan, sources, rounds: int) -> None:
    """The bench's echo measurement in interleaved rounds; prints medians and server CPU per message."""
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_id in range(rounds):
        for name in names if round_id % 2 == 0 else names[::-1]:
            server = servers[name]
            procstat.wait_idle(server.pid, timeout=5)
            before = procstat.cpu_ticks_seconds(server.pid)
            got = load.echo(server.ws_url("/echo"), server.origin, plan.echo_clients, plan.echo_seconds, sources.take())
            used = procstat.cpu_ticks_seconds(server.pid) - before
            rates[name].append(got["rate"])
            if got.get("total"):
                cpu[name].append(used / got["total"] * 1e6)
        print(f"echo round {round_id + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}/s" for n in names), flush=True)
    for name in names:
        print(
            f"{name}: echo median {statistics.median(rates[name]):,.0f} msgs/s, "
            f"{statistics.median(cpu[name]):.1f} us server CPU each",
            flush=True,
        )


def profile_tables(profile: dict | None) -> str:
    """The py-spy summary as two Markdown tables: self time by line, inclusive time by function."""
    if not profile or not profile.get("samples"):
        return f"(no profile: {profile})"
    lines = [f"{profile['samples']:,} samples. Innermost Python line (self time):", "", "| share | line |"]
    lines += ["| ---: | --- |", *(f"| {share:.1%} | `{name}` |" for name, share in profile["self"])]
    lines += ["", "Inclusive (the function or anything it calls):", "", "| share | function |", "| ---: | --- |"]
    lines += [f"| {share:.1%} | `{name}` |" for name, share in profile["inclusive"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
