"""Echo throughput and handshake rate, measured on every server in interleaved rounds.

All the servers are started together (idle ones cost no CPU), then each round
measures each server once, in alternating order. Noise from a shared machine
then falls on every server alike, and the median of the rounds is reported.
Server CPU per message (or handshake) comes from the process's utime + stime,
which include threads that have exited (a thread-per-connection server's).
"""

from __future__ import annotations

import statistics

from . import load, procstat
from .plan import Plan
from .scenario import PeerRun, progress, warm_up
from .servers import ServerProcess, start_server


def _order(names: list[str], round_id: int) -> list[str]:
    return names if round_id % 2 == 0 else names[::-1]


def interleaved(servers: dict[str, ServerProcess], plan: Plan, sources, label: str = "") -> dict[str, dict]:
    """Echo msgs/s and handshakes/s of every server: {name: {"echo": {...}, "handshakes": {...}}}."""
    for server in servers.values():
        warm_up(server, plan, sources)
    names = list(servers)
    echo: dict[str, list[float]] = {name: [] for name in names}
    shakes: dict[str, list[float]] = {name: [] for name in names}
    echo_cpu: dict[str, list[float]] = {name: [] for name in names}
    shake_cpu: dict[str, list[float]] = {name: [] for name in names}
    failures: dict[str, list] = {name: [] for name in names}
    for round_id in range(plan.rate_rounds):
        for name in _order(names, round_id):
            server = servers[name]
            procstat.wait_idle(server.pid, timeout=5)
            cpu = procstat.cpu_ticks_seconds(server.pid)
            got = load.echo(server.ws_url("/echo"), server.origin, plan.echo_clients, plan.echo_seconds, sources.take())
            cpu = procstat.cpu_ticks_seconds(server.pid) - cpu
            echo[name].append(got["rate"])
            if got.get("total"):
                echo_cpu[name].append(cpu / got["total"] * 1e6)
            if got.get("failed") or got.get("lost"):
                failures[name].append(f"echo round {round_id}: {got.get('failed')} failed, {got.get('lost')} lost")
        progress(f"{label}echo round {round_id + 1}/{plan.rate_rounds}: " + _summary(echo, round_id, "msgs/s"))
    for round_id in range(plan.rate_rounds):
        for name in _order(names, round_id):
            got = handshake_round(servers[name], plan, sources)
            shakes[name].append(got["rate"])
            if got.get("cpu_us") is not None:
                shake_cpu[name].append(got["cpu_us"])
            if got.get("failed"):
                failures[name].append(f"handshakes round {round_id}: {got['failed']} failed {got.get('errors')}")
        progress(f"{label}handshake round {round_id + 1}/{plan.rate_rounds}: " + _summary(shakes, round_id, "/s"))
    return {
        name: {
            "echo": {
                "rate": statistics.median(echo[name]),
                "rounds": echo[name],
                "clients": plan.echo_clients,
                "cpu_us": _median(echo_cpu[name]),
            },
            "handshakes": {
                "rate": statistics.median(shakes[name]),
                "rounds": shakes[name],
                "cpu_us": _median(shake_cpu[name]),
            },
            "failures": failures[name],
        }
        for name in names
    }


def handshake_round(server: ServerProcess, plan: Plan, sources) -> dict:
    """One measured pass of opening handshakes on an idle ``server``: loadgen's result plus ``cpu_us`` each."""
    procstat.wait_idle(server.pid, timeout=5)
    cpu = procstat.cpu_ticks_seconds(server.pid)
    got = load.handshakes(
        server.ws_url("/echo"),
        server.origin,
        plan.handshakes,
        plan.handshake_concurrency,
        plan.handshake_seconds,
        sources.take(),
    )
    cpu = procstat.cpu_ticks_seconds(server.pid) - cpu
    got["cpu_us"] = cpu / got["ok"] * 1e6 if got.get("ok") else None
    return got


def _us(value: float | None) -> str:
    return f"{value:.1f} us" if value is not None else "-"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summary(values: dict[str, list[float]], round_id: int, unit: str) -> str:
    return ", ".join(f"{name} {v[round_id]:,.0f}" for name, v in values.items()) + f" {unit}"


def rates_phase(runs: list[PeerRun], plan: Plan) -> None:
    """Start every peer, measure echo and handshakes in interleaved rounds, profile asok_green, stop them."""
    servers: dict[str, ServerProcess] = {}
    try:
        for run in runs:
            servers[run.peer.name] = start_server(run.peer, run.project, run.work, tag="-rates")
            run.say(f"started for the echo and handshake rounds (pid {servers[run.peer.name].pid})")
        sources = runs[0].sources
        measured = interleaved(servers, plan, sources)
        for run in runs:
            got = measured[run.peer.name]
            run.result["echo"], run.result["handshakes"] = got["echo"], got["handshakes"]
            for failure in got["failures"]:
                run.problem(failure)
            run.say(
                f"echo {got['echo']['rate']:,.0f} msgs/s ({_us(got['echo']['cpu_us'])} server CPU each), "
                f"handshakes {got['handshakes']['rate']:,.0f}/s ({_us(got['handshakes']['cpu_us'])} each); "
                f"medians of {plan.rate_rounds}"
            )
        for run in runs:
            run.profile_echo(servers[run.peer.name])
            run.profile_handshakes(servers[run.peer.name])
    finally:
        for server in servers.values():
            server.stop()
