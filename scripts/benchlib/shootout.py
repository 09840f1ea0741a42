"""Latency at scale: the broadcast round-trip test of the websocket-shootout, on every peer.

Clients connect to ``/shootout`` (scripts/peers/__init__.py) from
scripts/loadgen.py processes in ``shootout`` mode. In each step more clients
are added; then, for a few seconds, round after round, a few clients picked at
random in each client process (the shootout's "sample" of senders) send a
broadcast request stamped with their time; the server sends it to every
connected client; a sender's round trip ends when its own broadcast comes back.
Steps go on until the 95th percentile of a step's round trips passes the limit
(250 ms) or the largest size is reached. A peer's figure is the largest client
count whose step stayed within the limit, every smaller step having stayed
within it too.

On a machine of two cores or more the server runs on core 0 and every client
process on core 1, so readers of thousands of sockets do not take the server's
core. All the peers' servers run at once and each step is measured on all of
them in slices of a second, taken in turn (the order alternating), so the noise
of a shared machine falls on all of them alike. The whole test runs ``passes`` times; the figure reported is
the median over the passes.
"""

from __future__ import annotations

import math
import os
import pathlib
import statistics
import time
from dataclasses import dataclass

from . import load, procstat
from .profiling import Recording, py_spy
from .scenario import progress
from .servers import Peer, start_server

#: The p95 round trip a step may reach and still count (the issue's limit).
LIMIT_MS = 250.0


@dataclass
class LatencyPlan:
    """Sizes and durations of the latency-at-scale test."""

    max_clients: int = 20000
    step: int = 500
    seconds: float = 4.0
    #: Each step's seconds are taken in this many slices, the peers in turn.
    slices: int = 4
    #: Broadcast requests in flight in a round, over all client processes (shared out evenly, at least 1 each).
    senders: int = 4
    passes: int = 2
    limit_ms: float = LIMIT_MS
    #: A sender whose broadcast is not back after this long counts as a timeout (its round ends).
    round_timeout: float = 5.0
    #: Connections per client process (open files: well under 20,000).
    per_process: int = load.PER_PROCESS
    open_timeout: float = 120.0
    #: Server on one core, client processes on another (when there are two or more).
    pin: bool = True

    def steps(self) -> list[int]:
        """The client counts, step after step."""
        return list(range(self.step, self.max_clients + 1, self.step)) or [self.max_clients]

    def processes(self) -> int:
        """Client processes needed for the largest step."""
        return max(1, -(-self.max_clients // self.per_process))

    def senders_per_process(self) -> int:
        """Broadcast requests in flight in each client process's rounds."""
        return max(1, round(self.senders / self.processes()))

    def senders_in_flight(self) -> int:
        """Broadcast requests in flight over all client processes (``senders``, rounded to a multiple)."""
        return self.senders_per_process() * self.processes()


# -- pure figures -------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of sorted values, nearest rank; nan when empty."""
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def step_summary(clients: int, rtts_ms: list[float], timeouts: int, rounds: int, connected: int = 0) -> dict:
    """p50 and p95 of one step's round trips at ``clients`` (the step's size; ``connected``: how many were).

    A request that timed out counts as an infinitely long round trip.
    """
    ordered = sorted(rtts_ms) + [math.inf] * timeouts
    return {
        "clients": clients,
        "connected": connected or clients,
        "samples": len(ordered),
        "timeouts": timeouts,
        "rounds": rounds,
        "p50_ms": percentile(ordered, 0.50),
        "p95_ms": percentile(ordered, 0.95),
    }


def clients_within(steps: list[dict], limit_ms: float = LIMIT_MS) -> int:
    """The largest client count whose p95 stayed within ``limit_ms``, every smaller step too (0 if none)."""
    within = 0
    for step in steps:
        if not step["samples"] or not step["p95_ms"] <= limit_ms:
            break
        within = step["clients"]
    return within


def median_curve(passes: list[list[dict]]) -> list[dict]:
    """Per client count, the median p50 and p95 over the passes that measured it."""
    by_clients: dict[int, list[dict]] = {}
    for steps in passes:
        for step in steps:
            by_clients.setdefault(step["clients"], []).append(step)
    return [
        {
            "clients": clients,
            "passes": len(steps),
            "p50_ms": statistics.median(s["p50_ms"] for s in steps),
            "p95_ms": statistics.median(s["p95_ms"] for s in steps),
        }
        for clients, steps in sorted(by_clients.items())
    ]


def summarise(name: str, label: str, passes: list[dict], limit_ms: float) -> dict:
    """One peer's result: every pass, the median figure and the median curve."""
    withins = [p["within"] for p in passes]
    cpu = [s["cpu_us_per_msg"] for p in passes for s in p["steps"] if s.get("cpu_us_per_msg")]
    steps = [s for p in passes for s in p["steps"]]
    busy = {
        key: statistics.median(s[key] for s in steps) if steps and all(key in s for s in steps) else None
        for key in ("server_busy", "clients_busy")
    }
    return {
        **busy,
        "cpu_us_per_msg": statistics.median(cpu) if cpu else None,
        "name": name,
        "label": label,
        "passes": passes,
        "within": statistics.median(withins) if withins else 0,
        "curve": median_curve([p["steps"] for p in passes]),
        "limit_ms": limit_ms,
    }


def pool(results: list[dict]) -> dict:
    """Several runs' latency results as one: every peer's passes together, summarised again."""
    first = results[0]
    plan = dict(first["plan"], passes=sum(r["plan"]["passes"] for r in results))
    peers = []
    for peer in first["peers"]:
        passes = [p for r in results for q in r["peers"] if q["name"] == peer["name"] for p in q["passes"]]
        peers.append(summarise(peer["name"], peer["label"], passes, plan["limit_ms"]))
    pressures = [r["cpu_pressure"] for r in results if r.get("cpu_pressure") is not None]
    return {
        **first,
        "plan": plan,
        "peers": peers,
        "load_after": results[-1]["load_after"],
        "cpu_pressure": max(pressures) if pressures else None,
        "profile": next((r["profile"] for r in reversed(results) if r.get("profile")), None),
    }


# -- the load --------------------------------------------------------------------------


class ShootoutClients(load.Holders):
    """Client processes in loadgen's ``shootout`` mode: held connections that time broadcast round trips."""

    mode = "shootout"

    def cpu_seconds(self) -> float:
        """CPU time used so far by all the client processes."""
        total = 0.0
        for gen in self.procs:
            try:
                total += procstat.cpu_ticks_seconds(gen.proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def rounds(self, seconds: float, senders: int, timeout: float) -> tuple[list[float], int, int]:
        """All processes run rounds for ``seconds`` at once: (round trips in ms, timeouts, rounds)."""
        for gen in self.procs:
            gen.command(cmd="rounds", seconds=seconds, senders=senders, timeout=timeout)
        rtts: list[float] = []
        timeouts = rounds = 0
        for gen in self.procs:
            got = gen.wait("rtts", seconds + timeout + 30)
            if got is None:
                timeouts += senders
                continue
            rtts += got["rtts"]
            timeouts += got["timeouts"]
            rounds += got["rounds"]
        return rtts, timeouts, rounds


def core_split(pin: bool = True) -> tuple[set[int] | None, set[int] | None]:
    """(server cores, client cores): one core each when there are two or more (and ``pin``), else no pinning."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or not pin:
        return None, None
    return {cores[0]}, {cores[1]}


def cpu_pressure() -> float | None:
    """Share of the last 300 s in which some task waited for a CPU (Linux PSI), or None where unknown."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()
        return float(dict(field.split("=") for field in some[1:])["avg300"]) / 100
    except (OSError, ValueError, KeyError, IndexError):
        return None


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, OSError):
            pass


class Lane:
    """One peer in one pass: its server, its clients, and the steps measured so far."""

    def __init__(self, peer: Peer, plan: LatencyPlan, project: pathlib.Path, work: pathlib.Path, sources, tag: str):
        self.peer, self.plan = peer, plan
        self.steps: list[dict] = []
        self.problems: list[str] = []
        self.stopped = f"reached the largest size, {plan.max_clients:,} clients"
        self.done = False
        server_cpus, self.client_cpus = core_split(plan.pin)
        self.server = start_server(peer, project, work, tag=f"-latency{tag}")
        if server_cpus:
            pin(self.server.pid, server_cpus)
        self.clients = ShootoutClients(
            self.server.ws_url("/shootout"),
            self.server.origin,
            sources,
            most=plan.max_clients,
            cpus=self.client_cpus,
            max_seconds=1800,
        )
        self.clients.processes = plan.processes()
        self.warmed = False
        self.rtts: list[float] = []
        self.timeouts = self.rounds = 0
        self.cpu = self.client_cpu = self.elapsed = 0.0

    def grow(self, target: int) -> int | None:
        """Connect clients up to ``target``; how many are open (None, and done, when too few connected)."""
        clients = self.clients
        try:
            clients.grow(target - clients.open, self.plan.open_timeout)
            open_now = clients.still_open()
        except Exception as exc:  # reported; the other peers go on
            self.problems.append(f"failed at {target:,} clients: {exc!r}")
            self.finish(f"failed at {target:,} clients")
            return None
        if open_now < 0.98 * target:
            self.finish(f"only {open_now:,} of {target:,} clients connected")
            self.problems.append(f"{self.stopped}; loadgen saw: {clients.errors}")
            return None
        return open_now

    def begin(self) -> None:
        """Start a step's measurement: the server idle, its lazy imports loaded by a first, uncounted second."""
        procstat.wait_idle(self.server.pid, timeout=10)
        if not self.steps and not self.warmed:
            self.clients.rounds(1.0, self.plan.senders_per_process(), self.plan.round_timeout)
            self.warmed = True
        self.rtts, self.timeouts, self.rounds, self.cpu, self.client_cpu, self.elapsed = [], 0, 0, 0.0, 0.0, 0.0

    def slice(self, seconds: float) -> None:
        """``seconds`` of rounds, added to the step's figures."""
        cpu, client_cpu = procstat.cpu_seconds(self.server.pid), self.clients.cpu_seconds()
        started = time.monotonic()
        rtts, timeouts, rounds = self.clients.rounds(seconds, self.plan.senders_per_process(), self.plan.round_timeout)
        self.elapsed += time.monotonic() - started
        self.cpu += procstat.cpu_seconds(self.server.pid) - cpu
        self.client_cpu += self.clients.cpu_seconds() - client_cpu
        self.rtts += rtts
        self.timeouts += timeouts
        self.rounds += rounds

    def end(self, target: int, open_now: int, first: dict | None = None) -> dict:
        """The step's figures from its slices."""
        rtts = self.rtts
        step = step_summary(target, rtts, self.timeouts, self.rounds, open_now)
        # Every request that came back reached every client: server CPU per delivered message.
        step["cpu_us_per_msg"] = self.cpu / (len(rtts) * open_now) * 1e6 if rtts else None
        # CPU time per second of rounds, as a share of one core.
        step["server_busy"] = self.cpu / self.elapsed if self.elapsed else 0.0
        step["clients_busy"] = self.client_cpu / self.elapsed if self.elapsed else 0.0
        if first is not None:
            step["first_p95_ms"] = first["p95_ms"]
        again = " (measured again)" if first is not None else ""
        progress(
            f"{self.peer.label}: {open_now:,} clients{again}: p50 {step['p50_ms']:.1f} ms, "
            f"p95 {step['p95_ms']:.1f} ms ({step['samples']} round trips, {self.timeouts} timed out, "
            f"{self.rounds} rounds; server CPU {step['cpu_us_per_msg'] or 0:.1f} us per delivered message; "
            f"CPU: server {step['server_busy']:.0%}, clients {step['clients_busy']:.0%} of a core)"
        )
        return step

    def record(self, step: dict) -> None:
        """Keep the step; done once it is over the limit or the server has died."""
        self.steps.append(step)
        if not step["p95_ms"] <= self.plan.limit_ms:
            self.finish(f"p95 passed {self.plan.limit_ms:.0f} ms at {step['connected']:,} clients")
        elif not self.server.alive():
            self.finish("the server died")

    def finish(self, why: str | None = None) -> None:
        """Stop the server, then drop its clients (a thread per connection server tears down faster so)."""
        if self.done:
            return
        self.done = True
        if why:
            self.stopped = why
        if not self.server.alive():
            self.problems.append(f"server died: {self.server.tail(5)}")
        self.server.stop()
        self.clients.close()

    def result(self) -> dict:
        """This pass's figures for the peer."""
        within = clients_within(self.steps, self.plan.limit_ms)
        return {"steps": self.steps, "within": within, "stopped": self.stopped, "problems": self.problems}


def measure(lanes: list[Lane], plan: LatencyPlan, sizes: dict, parity: int, first: dict | None = None) -> dict:
    """One step on every lane, in slices taken in turn (the order alternating), so bursts of other work
    on the machine fall on all of them alike; {lane: step}."""
    for lane in lanes:
        lane.begin()
    for number in range(plan.slices):
        for lane in lanes if (number + parity) % 2 == 0 else lanes[::-1]:
            try:
                lane.slice(plan.seconds / plan.slices)
            except Exception as exc:  # reported with the step's figures; the other peers go on
                lane.problems.append(f"rounds failed: {exc!r}")
    return {lane: lane.end(*sizes[lane], first=(first or {}).get(lane)) for lane in lanes}


def run_pass(peers: list[Peer], plan: LatencyPlan, project: pathlib.Path, work: pathlib.Path, sources, number: int):
    """One pass: every peer's server up at once, each step measured on all of them together.

    A step over the limit is measured once more and the second measurement
    counts: on a shared machine, one burst of someone else's work should not
    end a peer's climb.
    """
    lanes: list[Lane] = []
    try:
        for peer in peers:
            lanes.append(Lane(peer, plan, project, work, sources, tag=f"-{number}"))
        for index, target in enumerate(plan.steps()):
            sizes = {}
            for lane in lanes:
                if not lane.done:
                    open_now = lane.grow(target)
                    if open_now is not None:
                        sizes[lane] = (target, open_now)
            active = [lane for lane in lanes if lane in sizes]
            if not active:
                break
            steps = measure(active, plan, sizes, index + number)
            over = [lane for lane in active if not steps[lane]["p95_ms"] <= plan.limit_ms]
            if over:
                steps.update(measure(over, plan, sizes, index + number + 1, first=steps))
            for lane in active:
                lane.record(steps[lane])
    finally:
        for lane in lanes:
            lane.finish()
    return {lane.peer.name: lane.result() for lane in lanes}


def run(peers: list[Peer], plan: LatencyPlan, project: pathlib.Path, work: pathlib.Path, sources) -> dict:
    """Every pass on every peer (order alternating between passes); the dict for the report and the chart."""
    server_cpus, client_cpus = core_split(plan.pin)
    pinning = (
        f"server on core {min(server_cpus)}, client processes on core {min(client_cpus)} (sched_setaffinity)"
        if server_cpus
        else "server and clients not pinned to cores"
    )
    progress(
        f"latency at scale: steps of {plan.step:,} up to {plan.max_clients:,} clients, {plan.seconds:g} s of "
        f"rounds each, {plan.senders_in_flight()} senders per round ({plan.senders_per_process()} in each of "
        f"{plan.processes()} client processes), {plan.passes} pass(es); {pinning}"
    )
    passes: dict[str, list[dict]] = {peer.name: [] for peer in peers}
    for number in range(plan.passes):
        progress(f"latency at scale: pass {number + 1} of {plan.passes}")
        results = run_pass(peers, plan, project, work, sources, number)
        for peer in peers:
            result = results.get(peer.name) or {"steps": [], "within": 0, "stopped": "did not start", "problems": []}
            passes[peer.name].append(result)
            progress(
                f"{peer.label}: pass {number + 1}: {result['within']:,} clients within "
                f"{plan.limit_ms:.0f} ms p95 ({result['stopped']})"
            )
    return {
        "plan": plan.__dict__,
        "senders": plan.senders_in_flight(),
        "senders_per_process": plan.senders_per_process(),
        "processes": plan.processes(),
        "pinning": pinning,
        "load_after": os.getloadavg()[0],
        "cpu_pressure": cpu_pressure(),
        "peers": [summarise(peer.name, peer.label, passes[peer.name], plan.limit_ms) for peer in peers],
    }


def profile_green(
    peer: Peer, plan: LatencyPlan, project: pathlib.Path, work: pathlib.Path, sources, clients: int
) -> dict | None:
    """py-spy on asok_green alone while it runs rounds at ``clients`` clients (None without py-spy)."""
    if py_spy() is None:
        return None
    lane = Lane(peer, plan, project, work, sources, tag="-profile")
    try:
        lane.clients.grow(clients, plan.open_timeout)
        open_now = lane.clients.still_open()
        procstat.wait_idle(lane.server.pid, timeout=10)
        lane.clients.rounds(1.0, plan.senders_per_process(), plan.round_timeout)
        recording = Recording(lane.server.pid, plan.seconds, work / "profile-latency.txt")
        cpu0, started = procstat.cpu_seconds(lane.server.pid), time.monotonic()
        rtts, timeouts, rounds = lane.clients.rounds(plan.seconds, plan.senders_per_process(), plan.round_timeout)
        cpu, elapsed = procstat.cpu_seconds(lane.server.pid) - cpu0, time.monotonic() - started
        summary = recording.finish()
    finally:
        lane.finish()
    step = step_summary(clients, rtts, timeouts, rounds, open_now)
    delivered = len(rtts) * open_now  # every answered request reached every client
    return {
        "clients": open_now,
        "seconds": plan.seconds,
        "p50_ms": step["p50_ms"],
        "p95_ms": step["p95_ms"],
        "cpu_us_per_msg": cpu / delivered * 1e6 if delivered else None,
        "busy": cpu / elapsed if elapsed else 0.0,
        "summary": summary,
    }


def profile_if_missed(
    latency: dict, peers: list[Peer], plan: LatencyPlan, project: pathlib.Path, work: pathlib.Path, sources
) -> None:
    """When asok_green misses a target, profile it at the first step past its figure (into ``latency``)."""
    from .field import latency_missed
    from .targets import GREEN, latency_verdict

    green = next((p for p in peers if p.name == GREEN), None)
    if green is None or (latency_verdict(latency).met is not False and not latency_missed(latency)):
        return
    mine = next(p for p in latency["peers"] if p["name"] == GREEN)
    clients = min(plan.max_clients, int(mine["within"]) + plan.step)
    progress(f"latency at scale: asok_green missed the target; profiling it at {clients:,} clients")
    try:
        latency["profile"] = profile_green(green, plan, project, work, sources, clients)
    except Exception as exc:  # the measurement stands without its profile
        progress(f"  latency profile failed: {exc!r}")
