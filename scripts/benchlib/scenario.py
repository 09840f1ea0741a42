"""One peer under the bench's load, start to stop: every measurement of the table."""

from __future__ import annotations

import pathlib
import statistics
import sys
import time
import urllib.request

from . import load, procstat
from .plan import Plan
from .profiling import Recording
from .project import auth_cookie
from .servers import Peer, ServerProcess, start_server

_START = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, with the time since the bench started."""
    sys.stderr.write(f"[{time.monotonic() - _START:6.1f}s] {message}\n")
    sys.stderr.flush()


def warm_up(server: ServerProcess, plan: Plan, sources, cookie: str | None = None) -> str | None:
    """One page, a few handshakes, a broadcast and echoes, so lazy imports are not counted as connections.

    Returns a description of what failed, or None.
    """
    failure = None
    try:
        urllib.request.urlopen(server.http_url + server.peer.http_path, timeout=10).read()
    except OSError as exc:
        failure = f"warm-up HTTP request failed: {exc}"
    holders = load.Holders(server.ws_url("/room"), server.origin, sources, cookie)
    holders.grow(20, open_timeout=30)
    control = load.ControlClient(server.port, server.origin)
    control.broadcast(1, plan.message_size)
    control.close()
    holders.close()
    load.handshakes(server.ws_url("/echo"), server.origin, 50, 8, 10, sources.take())
    load.echo(server.ws_url("/echo"), server.origin, 2, 0.3, sources.take())
    procstat.wait_idle(server.pid)
    return failure


class PeerRun:
    """Measures one peer; the results end up in ``self.result``."""

    def __init__(self, peer: Peer, plan: Plan, project: pathlib.Path, work: pathlib.Path, sources):
        self.peer, self.plan, self.project, self.work, self.sources = peer, plan, project, work, sources
        self.profiling = plan.profile and peer.name == "asok_green"
        self.result: dict = {"name": peer.name, "label": peer.label, "notes": peer.notes, "problems": []}

    def say(self, message: str) -> None:
        """Progress line prefixed with the peer's name."""
        progress(f"{self.peer.label}: {message}")

    def problem(self, message: str) -> None:
        """Record something that went wrong (it goes into the report)."""
        self.result["problems"].append(message)
        self.say("PROBLEM: " + message)

    # -- the two server lives -----------------------------------------------------

    def run(self) -> dict:
        """The idle levels of this peer, anonymous then authenticated, each in a fresh server process."""
        started = time.monotonic()
        self.life("anonymous", self.anonymous_life)
        if self.peer.auth:
            self.life("authenticated", self.auth_life)
        self.result["seconds"] = round(time.monotonic() - started, 1)
        return self.result

    def life(self, tag: str, body) -> None:
        """Start a server, run ``body(server, holders)``, stop the server, then drop the idle clients.

        The server goes first: a thread-per-connection server would otherwise spend
        minutes (and every core) tearing down thousands of threads at once.
        """
        server = start_server(self.peer, self.project, self.work, tag=f"-{tag}")
        self.say(f"started for the {tag} run (pid {server.pid})")
        holders: list[load.Holders] = []
        try:
            body(server, holders)
        except Exception as exc:  # report, then go on with the next life and the other peers
            self.problem(f"{tag} run failed: {exc!r}")
        finally:
            if not server.alive():
                self.problem(f"server died during the {tag} run: {server.tail(5)}")
            server.stop()
            for group in holders:
                group.close()

    def anonymous_life(self, server: ServerProcess, holders: list) -> None:
        """HTTP alone, then anonymous idle levels with fan-out and HTTP measured on the way up."""
        self.warm_up(server)
        self.result.setdefault("http", {})["plain"] = self.http(server, "HTTP without WebSockets")
        procstat.wait_idle(server.pid)
        self.result.setdefault("idle", {})["anonymous"] = self.idle_levels(server, None, holders, with_load=True)

    def auth_life(self, server: ServerProcess, holders: list) -> None:
        """Idle levels again, every connection logged in with a real asok_session cookie."""
        cookie = auth_cookie(server.http_url)
        self.warm_up(server, cookie)
        self.result.setdefault("idle", {})["authenticated"] = self.idle_levels(server, cookie, holders, with_load=False)

    def warm_up(self, server: ServerProcess, cookie: str | None = None) -> None:
        """See :func:`warm_up`."""
        failure = warm_up(server, self.plan, self.sources, cookie)
        if failure:
            self.problem(failure)

    # -- (a), (b), (e): idle levels, with fan-out and HTTP measured on the way ----

    def idle_levels(self, server: ServerProcess, cookie: str | None, keep: list, with_load: bool) -> list[dict]:
        """Open the idle levels one after the other; RSS at each (and fan-out, HTTP when ``with_load``).

        The holders are appended to ``keep``, closed by the caller after the server stops.
        """
        kind = "authenticated" if cookie else "anonymous"
        base_rss = procstat.rss_bytes(server.pid)
        base_files = procstat.open_files(server.pid)
        levels: list[dict] = []
        holders = load.Holders(server.ws_url("/room"), server.origin, self.sources, cookie, most=self.plan.sizes[-1])
        keep.append(holders)
        for target in self.plan.sizes:
            grown = holders.grow(target - holders.open, self.plan.open_timeout)
            procstat.wait_idle(server.pid)
            if not server.alive():
                self.problem(f"server died at {target} {kind} connections")
                break
            open_now = holders.still_open()
            rss = procstat.rss_bytes(server.pid)
            files = procstat.open_files(server.pid)
            level = {
                "target": target,
                "open": open_now,
                "failed": holders.failed,
                "errors": dict(holders.errors),
                "rss": rss,
                "base_rss": base_rss,
                "per_conn": (rss - base_rss) / open_now if open_now else None,
                "threads": procstat.thread_count(server.pid),
                "files": files,
                "files_per_conn": (files - base_files) / open_now if open_now else None,
                "open_seconds": round(grown["seconds"], 2),
            }
            levels.append(level)
            per = f"{level['per_conn'] / 1000:.1f} KB/conn" if open_now else "-"
            self.say(
                f"{open_now}/{target} {kind} idle open in {grown['seconds']:.1f}s, "
                f"RSS {rss / 2**20:.1f} MiB ({per}, {level['threads']} threads)"
            )
            if open_now < 0.98 * target:
                limit = procstat.open_files_limit(server.pid)
                per = level["files_per_conn"]
                files_note = (
                    f"; the server holds {files:,} open files ({per:.1f} per connection) of its limit of {limit:,}"
                    if per and limit
                    else ""
                )
                self.problem(
                    f"reached only {open_now:,} of {target:,} {kind} connections{files_note}; "
                    f"loadgen saw: {holders.errors}"
                )
                if with_load:
                    self.fanout(server, holders, open_now, final=True)
                break
            if with_load:
                self.load_at_level(server, holders, target)
        return levels

    def load_at_level(self, server: ServerProcess, holders: load.Holders, level: int) -> None:
        plan = self.plan
        if level in plan.fanout:
            self.fanout(server, holders, level)
        elif level == plan.sizes[-1]:
            self.fanout(server, holders, level, final=True)
        if level == plan.http_idle:
            http = self.result.setdefault("http", {})
            http["with_idle"] = self.http(server, f"HTTP with {level} idle WebSockets")
            http["idle"] = level
            if self.profiling:
                self.result.setdefault("profiles", {})["http_idle"] = self.profile_http(server)

    def fanout(self, server: ServerProcess, holders: load.Holders, level: int, final: bool = False) -> None:
        """Broadcast rounds to the ``level`` idle subscribers: server CPU per delivery, time to the last one."""
        rounds = 1 if final else self.plan.fanout_rounds(level)
        measured = self.broadcast_rounds(server, holders, rounds)
        key = "fanout_all" if final else "fanout"
        entry = {"subscribers": level, **measured}
        if final:
            self.result[key] = entry
        else:
            self.result.setdefault(key, {})[str(level)] = entry
        cpu = entry.get("cpu_us_per_msg")
        cpu_text = f"{cpu:.2f} us" if cpu is not None else "-"
        self.say(
            f"fan-out to {level}: {entry['delivered']}/{entry['armed']} delivered, {cpu_text} CPU/msg, "
            f"last after {entry['latency_ms']:.1f} ms (median of {rounds})"
            if entry.get("latency_ms") is not None
            else f"fan-out to {level}: nothing delivered"
        )
        if not final and self.profiling and level == max(self.plan.fanout):
            self.result.setdefault("profiles", {})["fanout"] = self.profile_fanout(server, holders)

    def broadcast_rounds(self, server: ServerProcess, holders: load.Holders, rounds: int, until=None) -> dict:
        """``rounds`` broadcasts of one message each (or until ``until()`` is false); medians."""
        control = load.ControlClient(server.port, server.origin)
        cpu_per, latencies, delivered, armed = [], [], 0, 0
        try:
            for round_id in range(rounds):
                if until is not None and not until():
                    break
                armed = holders.arm(round_id, 1)
                cpu0 = procstat.cpu_seconds(server.pid)
                t0 = time.monotonic()
                done = control.broadcast(1, self.plan.message_size)
                complete, t_last = holders.collect(timeout=60)
                cpu1 = procstat.cpu_seconds(server.pid)
                delivered = complete
                if not done or not complete or t_last is None:
                    continue
                cpu_per.append((cpu1 - cpu0) / complete * 1e6)
                latencies.append((t_last - t0) * 1e3)
        finally:
            control.close()
        return {
            "rounds": len(latencies),
            "armed": armed,
            "delivered": delivered,
            "cpu_us_per_msg": statistics.median(cpu_per) if cpu_per else None,
            "latency_ms": statistics.median(latencies) if latencies else None,
        }

    # -- (c), (d), (e) -------------------------------------------------------------

    def http(self, server: ServerProcess, what: str) -> dict | None:
        """wrk on the peer's HTTP port."""
        if not load.wrk_available():
            if "wrk" not in str(self.result["problems"]):
                self.problem("wrk is not installed (apt-get install wrk): HTTP not measured")
            return None
        procstat.wait_idle(server.pid)
        result = load.wrk(server.http_url + self.peer.http_path, self.plan.http_seconds, self.plan.http_connections)
        self.say(f"{what}: {result['rate']:.0f} requests/s")
        if result["non_2xx"] or result["socket_errors"]:
            self.problem(f"{what}: {result['non_2xx']} non-2xx answers; socket errors {result['socket_errors']}")
        return result

    def profile_echo(self, server: ServerProcess) -> None:
        """py-spy over an extra echo pass (asok_green only)."""
        if not self.profiling:
            return
        plan = self.plan
        procstat.wait_idle(server.pid)
        recording = self.recording(server, "echo")
        load.echo(server.ws_url("/echo"), server.origin, plan.echo_clients, plan.profile_seconds, self.sources.take())
        self.result.setdefault("profiles", {})["echo"] = recording.finish()

    def profile_handshakes(self, server: ServerProcess) -> None:
        """py-spy over an extra handshake pass (asok_green only)."""
        if not self.profiling:
            return
        plan = self.plan
        procstat.wait_idle(server.pid)
        recording = self.recording(server, "handshakes")
        url = server.ws_url("/echo")
        load.handshakes(
            url, server.origin, 100_000, plan.handshake_concurrency, plan.profile_seconds, self.sources.take()
        )
        self.result.setdefault("profiles", {})["handshakes"] = recording.finish()

    # -- profiles (asok_green only, extra passes after the measured ones) -----------

    def recording(self, server: ServerProcess, what: str) -> Recording:
        recording = Recording(server.pid, self.plan.profile_seconds, self.work / f"profile-{what}.txt")
        time.sleep(0.3)  # py-spy attaches
        return recording

    def profile_fanout(self, server: ServerProcess, holders: load.Holders) -> dict | None:
        procstat.wait_idle(server.pid)
        recording = self.recording(server, "fanout")
        self.broadcast_rounds(server, holders, 200, until=recording.running)
        return recording.finish()

    def profile_http(self, server: ServerProcess) -> dict | None:
        if not load.wrk_available():
            return None
        procstat.wait_idle(server.pid)
        recording = self.recording(server, "http")
        load.wrk(server.http_url + self.peer.http_path, self.plan.profile_seconds, self.plan.http_connections)
        return recording.finish()
