"""Idle memory as a user sees it: before the first ping, and once every connection has spoken.

One server, ``connections`` idle clients on ``/room`` from two loadgen processes
(127.0.0.x source addresses), through four phases:

1. **never spoke**: RSS growth per connection once they are all open;
2. **keep-alive round**: held until every connection has answered a ping;
   the RSS peak while the round runs (sampled every 0.1 s) and RSS once it settled;
3. **one message each way**: every connection sends one message, then one
   broadcast reaches them all; peak and settled RSS;
4. **held**: kept for ``hold_seconds`` more (at least one more ping each): the
   server's CPU while it only keeps connections alive, the peak, and RSS at the
   end: the **steady** figure.

Every RSS figure is growth over the server's RSS before the first connection,
divided by the connections open. Each peak is reported as a ratio to the RSS
it settled at (whole process RSS, as a small VM's memory sees it).

:func:`compare` measures several builds of asok_green (this tree, and for
instance ``main`` from before a change, through PYTHONPATH) in turns, a fresh
server each time, and gives each build's medians.
"""

from __future__ import annotations

import pathlib
import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from . import load, procstat
from .plan import Plan
from .project import project_env
from .scenario import progress, warm_up
from .servers import BIN, PEERS_BY_NAME, ServerProcess, free_port

#: The figures of a build summarised over its rounds (medians), and where each is in a round's result.
FIGURES = {
    "never_spoke": ("never_spoke",),
    "after_round": ("round", "per_conn"),
    "after_message": ("message", "per_conn"),
    "steady": ("steady",),
    "round_peak_over_settled": ("round", "peak_over_settled"),
    "message_peak_over_settled": ("message", "peak_over_settled"),
    "held_peak_over_settled": ("held", "peak_over_settled"),
    "held_cpu_percent": ("held", "cpu_percent"),
    "held_cpu_us_per_ping": ("held", "cpu_us_per_ping"),
}

#: (argv or None for ``asok serve --gevent``, a factory of ``snapshot`` for :func:`measure` or None)
Variant = tuple[list[str] | None, Callable[[ServerProcess], Callable[[str], dict]] | None]


@dataclass
class SteadyPlan:
    """Sizes and durations of one steady-state measurement."""

    connections: int = 10_000
    #: Seconds the phase 4 hold lasts (the server's keep-alive interval is 20 s by default).
    hold_seconds: float = 60.0
    #: Longest wait for every connection to answer a ping.
    round_timeout: float = 120.0
    #: Seconds spread over which the connections send their one message (0: all at once).
    say_spread: float = 0.0
    message_size: int = 128
    open_timeout: float = 120.0
    #: Seconds to wait after the server went quiet before reading a settled RSS
    #: (a reader that handled a message may wait this long for more).
    settle: float = 2.0

    @classmethod
    def quick(cls) -> SteadyPlan:
        """A few dozen connections and short waits: for a smoke run (with a short keep-alive interval)."""
        return cls(connections=60, hold_seconds=3.0, round_timeout=30.0, open_timeout=30.0, settle=0.5)


class PeakSampler:
    """Samples a process's RSS every ``period`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, period: float = 0.1):
        self.pid, self.period = pid, period
        self.peak = procstat.rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.peak = max(self.peak, procstat.rss_bytes(self.pid))
            except (OSError, KeyError):
                return

    def stop(self) -> int:
        """Stop sampling; the peak RSS in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def settled_rss(server: ServerProcess, settle: float) -> int:
    """RSS once the server has been quiet for a moment, and ``settle`` seconds after."""
    procstat.wait_idle(server.pid)
    time.sleep(settle)
    procstat.wait_idle(server.pid)
    return procstat.rss_bytes(server.pid)


def wait_pings(holders: load.Holders, target: int, timeout: float) -> dict:
    """Wait until the clients have answered ``target`` pings in all (or ``timeout``); the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = holders.status()
        if status["pings"] >= target or time.monotonic() >= deadline:
            return status
        time.sleep(0.5)


def measure(
    server: ServerProcess,
    plan: SteadyPlan,
    sources: load.SourceAddresses,
    label: str = "",
    snapshot: Callable[[str], dict] | None = None,
) -> dict:
    """The four phases on ``server`` (already warmed up); a dict of bytes and ratios.

    ``snapshot(phase)``, when given, is called at the end of each phase and
    its answer kept under ``diagnostics`` (allocator figures from the server).
    """
    say = (lambda text: progress(f"{label}: {text}")) if label else progress
    pid = server.pid
    result: dict = {"connections": plan.connections, "diagnostics": {}}

    def note(phase: str) -> None:
        if snapshot is not None:
            result["diagnostics"][phase] = snapshot(phase)

    procstat.wait_idle(pid)
    base = result["base_rss"] = procstat.rss_bytes(pid)
    note("base")
    holders = load.Holders(server.ws_url("/room"), server.origin, sources, most=plan.connections)
    try:
        grown = holders.grow(plan.connections, plan.open_timeout)
        opened = result["open"] = holders.still_open()
        if not opened:
            raise RuntimeError("no connection opened")
        procstat.wait_idle(pid)
        rss = procstat.rss_bytes(pid)
        result["never_spoke"] = (rss - base) / opened
        say(f"{opened} open in {grown['seconds']:.1f}s: never spoke {result['never_spoke']:.0f} B/conn")
        note("never spoke")

        # 2. the first keep-alive round
        pings0 = holders.status()["pings"]
        sampler = PeakSampler(pid)
        status = wait_pings(holders, pings0 + opened, plan.round_timeout)
        rss = settled_rss(server, plan.settle)
        peak = sampler.stop()
        result["round"] = _phase(rss, peak, base, opened, pings=status["pings"] - pings0)
        say(_describe("after a keep-alive round", result["round"]))
        note("after a keep-alive round")

        # 3. one message each way
        sampler = PeakSampler(pid)
        said = holders.say("hello", plan.say_spread)
        holders.arm(0, 1)
        control = load.ControlClient(server.port, server.origin)
        try:
            control.broadcast(1, plan.message_size)
        finally:
            control.close()
        delivered, _ = holders.collect(timeout=60)
        rss = settled_rss(server, plan.settle)
        peak = sampler.stop()
        result["message"] = _phase(rss, peak, base, opened, said=said, delivered=delivered)
        say(_describe(f"after one message each way ({said} sent, {delivered} got the broadcast)", result["message"]))
        note("after one message each way")

        # 4. held: CPU of keeping them alive, and the steady figure
        pings0 = holders.status()["pings"]
        sampler = PeakSampler(pid)
        cpu0, t0 = procstat.cpu_seconds(pid), time.monotonic()
        time.sleep(plan.hold_seconds)
        status = wait_pings(holders, pings0 + opened, plan.round_timeout)
        cpu1, t1 = procstat.cpu_seconds(pid), time.monotonic()
        rss = settled_rss(server, plan.settle)
        peak = sampler.stop()
        pings = status["pings"] - pings0
        held = result["held"] = _phase(rss, peak, base, opened, pings=pings)
        held["seconds"] = t1 - t0
        held["cpu_seconds"] = cpu1 - cpu0
        held["cpu_percent"] = (cpu1 - cpu0) / (t1 - t0) * 100
        held["cpu_us_per_ping"] = (cpu1 - cpu0) / pings * 1e6 if pings else None
        result["steady"] = held["per_conn"]
        result["open_at_end"] = status["open"]
        say(
            _describe(f"steady, held {t1 - t0:.0f}s ({pings} pings)", held)
            + f"; CPU {held['cpu_percent']:.2f}% of a core"
        )
        note("steady")
    finally:
        holders.close()
    return result


def _phase(rss: int, peak: int, base: int, opened: int, **extra) -> dict:
    return {
        "rss": rss,
        "peak": peak,
        "per_conn": (rss - base) / opened,
        "peak_per_conn": (peak - base) / opened,
        "peak_over_settled": peak / rss - 1,
        **extra,
    }


def _describe(what: str, phase: dict) -> str:
    return (
        f"{what}: {phase['per_conn']:.0f} B/conn, RSS {phase['rss'] / 2**20:.1f} MiB, "
        f"peak {phase['peak'] / 2**20:.1f} MiB ({phase['peak_over_settled']:+.1%})"
    )


def start_build(
    project: pathlib.Path, work: pathlib.Path, name: str, env: dict[str, str], argv: list[str] | None = None
) -> ServerProcess:
    """A server on the bench project: ``asok serve --gevent`` (or ``argv`` + ``--port``) with ``env`` added."""
    peer = PEERS_BY_NAME["asok_green"]
    port = free_port()
    log = work / f"{name.replace(' ', '-')}-{port}.log"
    log_file = open(log, "wb")
    command = [*argv, "--port", str(port)] if argv else peer.argv(port, port, project)
    proc = subprocess.Popen(
        command,
        cwd=project,
        env=project_env(PYTHONUNBUFFERED="1", **env),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(peer, proc, port, port, log, log_file)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(server.http_url + "/whoami", timeout=1).read()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} did not start:\n{server.tail()}")


def package_of(env: dict[str, str], project: pathlib.Path) -> str:
    """The tree a server started with ``env`` imports asok_green from (a check that PYTHONPATH took)."""
    code = "import asok_green, os; print(os.path.dirname(os.path.dirname(asok_green.__file__)))"
    done = subprocess.run(
        [str(BIN / "python"), "-c", code], cwd=project, env=project_env(**env), capture_output=True, text=True
    )
    return done.stdout.strip()


def commit_of(tree: str) -> str | None:
    """The short commit a source tree is checked out at (None if it is not a git checkout)."""
    done = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def compare(
    builds: dict[str, dict[str, str]],
    plan: SteadyPlan,
    rounds: int,
    project: pathlib.Path,
    work: pathlib.Path,
    sources: load.SourceAddresses,
    variant: Callable[[str, int], Variant] | None = None,
) -> dict:
    """Each build (name: environment) measured ``rounds`` times, the builds in turns; rounds and medians.

    The order of the builds shifts by one from round to round, so that load
    from elsewhere on the machine does not always fall on the same one.
    ``variant(name, round)`` may run a build through another command, with
    allocator snapshots (see scripts/idle_steady.py).
    """
    result: dict = {"plan": plan.__dict__, "rounds": rounds, "builds": {}}
    for name, env in builds.items():
        settings = {key: value for key, value in env.items() if key.startswith("WS_")}
        package = package_of(env, project)
        result["builds"][name] = {"package": package, "commit": commit_of(package), "settings": settings, "rounds": []}
    warm = Plan.quick()
    names = list(builds)
    for round_id in range(rounds):
        shift = round_id % len(names)
        for name in names[shift:] + names[:shift]:
            argv, snapshots = variant(name, round_id) if variant else (None, None)
            server = start_build(project, work, name, builds[name], argv)
            try:
                warm_up(server, warm, sources)
                procstat.wait_idle(server.pid)
                snapshot = snapshots(server) if snapshots else None
                measured = measure(server, plan, sources, f"{name} round {round_id + 1}", snapshot)
            except Exception as exc:  # a failed round is reported, not fatal
                measured = {"error": repr(exc), "log": server.tail(10)}
                progress(f"{name}: round {round_id + 1} failed: {exc!r}")
            finally:
                server.stop()
            result["builds"][name]["rounds"].append(measured)
    for entry in result["builds"].values():
        entry["median"] = medians(entry["rounds"])
    return result


def medians(rounds: list[dict]) -> dict:
    """The median of each of :data:`FIGURES` over the rounds that measured it."""
    out = {}
    for figure, path in FIGURES.items():
        values = []
        for measured in rounds:
            value = measured
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(value)
        out[figure] = statistics.median(values) if values else None
    return out
