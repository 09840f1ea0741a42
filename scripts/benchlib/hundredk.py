"""100,000 idle connections on one small machine: asok_green's workers on Redis, and the best peer the same way.

A process may hold at most 20,000 open files here, so the connections are
spread over several server processes:

* asok_green: ``asok serve --gevent --workers N`` with ``WS_REDIS_URL`` (the
  workers share one port through SO_REUSEPORT and are one server through a
  redis-server of the run's own); every connection goes to ``/room`` and one
  ``!bcast`` on any worker reaches all of them through Redis. With ``cookie``
  every connection is a logged-in user, so presence tracks it.
* a peer: N processes of its script, each on a port of its own (the peers have
  no cluster of their own); the connections are split over the ports, and the
  broadcast is triggered in every process at once.

The clients are scripts/loadgen.py processes (at most 5,000 connections each),
every one bound to a 127.0.0.x address of its own. Server RSS is the sum over
every process of the server (the supervising parent included); the figure per
connection is its growth over the RSS before the first connection, divided by
the connections held. The sum of RSS counts the pages the processes share
(Python's and the libraries' code) once per process; PSS, given beside it,
shares them out.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import subprocess
import time

from . import load, procstat
from .project import auth_cookie, project_env
from .scenario import progress
from .servers import BIN, Peer, free_port

MIB = 2**20


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += _children(current)
    return out


def _settle(pids: list[int], timeout: float) -> None:
    """Wait until each of ``pids`` is idle; a short-lived child that has ended meanwhile is passed over."""
    for pid in pids:
        try:
            procstat.wait_idle(pid, timeout=timeout)
        except (FileNotFoundError, ProcessLookupError):
            pass


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += procstat.rss_bytes(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def _pss(pids: list[int]) -> int | None:
    """Proportional set size summed over ``pids`` (shared pages counted once over the processes sharing them)."""
    total = 0
    for pid in pids:
        try:
            for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            return None
    return total


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f} s")


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Redis:
    """A redis-server of the run's own on a free loopback port, no persistence."""

    def __init__(self, folder: pathlib.Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [*argv, "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(self.port, self.proc)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop it."""
        _stop(self.proc)


def _hold(groups: list[tuple[load.Holders, int]], open_timeout: float) -> int:
    """Open every group's share, all groups at once; the connections open now."""
    for holders, share in groups:
        holders.grow_start(share, open_timeout)
    for holders, share in groups:
        holders.grow_finish(share, open_timeout)
    return sum(holders.still_open() for holders, _ in groups)


def _broadcast(groups: list[load.Holders], triggers: list[int], origin_for, size: int) -> dict:
    """Arm every holder, trigger one broadcast on each port of ``triggers``; deliveries and time to the last."""
    armed = sum(holders.arm(0, 1) for holders in groups)
    controls = [load.ControlClient(port, origin_for(port), timeout=120) for port in triggers]
    started = time.monotonic()
    try:
        done = all(control.broadcast(1, size, timeout=120) for control in controls)
    finally:
        for control in controls:
            control.close()
    delivered, last = 0, None
    for holders in groups:
        got, t_last = holders.collect(timeout=120)
        delivered += got
        if t_last is not None:
            last = t_last if last is None else max(last, t_last)
    return {
        "armed": armed,
        "delivered": delivered,
        "done": done,
        "ms_to_last": (last - started) * 1e3 if last is not None else None,
    }


def run_green(
    project: pathlib.Path,
    work: pathlib.Path,
    sources,
    connections: int,
    workers: int,
    logged_in: bool,
    open_timeout: float = 600,
) -> dict:
    """asok_green's workers on Redis holding ``connections`` on ``/room``; a broadcast to all."""
    kind = "logged in" if logged_in else "anonymous"
    result: dict = {"name": "asok_green", "label": "asok_green", "kind": kind, "workers": workers, "problems": []}
    redis = Redis(work)
    port = free_port()
    log_path = work / f"hundredk-green-{kind.replace(' ', '-')}.log"
    log = open(log_path, "wb")
    env = project_env(PYTHONUNBUFFERED="1", WS_REDIS_URL=redis.url)
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(argv, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    groups: list[load.Holders] = []
    try:
        _wait_port(port, proc)
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.2)
        base_url = f"http://127.0.0.1:{port}"
        cookie = auth_cookie(base_url) if logged_in else None
        pids = _tree(proc.pid)
        _settle(pids, timeout=20)
        base = _rss(pids)
        holders = load.Holders(f"ws://127.0.0.1:{port}/room", base_url, sources, cookie, most=connections)
        groups.append(holders)
        progress(f"idle at scale: asok_green ({workers} workers on Redis, {kind}): opening {connections:,}")
        started = time.monotonic()
        held = _hold([(holders, connections)], open_timeout)
        result["open_seconds"] = round(time.monotonic() - started, 1)
        pids = _tree(proc.pid)
        _settle(pids, timeout=60)
        result.update(_figures(pids, base, held, connections, holders))
        result["per_worker"] = [
            {"pid": pid, "rss": procstat.rss_bytes(pid), "files": procstat.open_files(pid)}
            for pid in _children(proc.pid)
        ]
        result["broadcast"] = _broadcast(groups, [port], lambda p: base_url, 128)
        result["redis_rss"] = procstat.rss_bytes(redis.proc.pid)
        log.flush()
        # Connections the keep-alive closed: their pong was not read within WS_PING_TIMEOUT.
        result["closed_silent"] = log_path.read_text(errors="replace").count(": silent for ")
        _say(result)
    except Exception as exc:  # reported in the row
        result["problems"].append(f"{exc!r}")
        progress(f"idle at scale: asok_green: PROBLEM {exc!r}")
    finally:
        _stop(proc)
        log.close()
        for holders in groups:
            holders.close()
        redis.stop()
    return result


def run_peer(
    peer: Peer,
    project: pathlib.Path,
    work: pathlib.Path,
    sources,
    connections: int,
    processes: int,
    open_timeout: float = 600,
) -> dict:
    """``processes`` of ``peer``'s script, each on its own port, holding ``connections`` between them."""
    result: dict = {"name": peer.name, "label": peer.label, "kind": "anonymous", "workers": processes, "problems": []}
    procs: list[subprocess.Popen] = []
    groups: list[load.Holders] = []
    ports: list[int] = []
    logs = []
    try:
        for number in range(processes):
            port = free_port()
            log = open(work / f"hundredk-{peer.name}-{number}.log", "wb")
            logs.append(log)
            argv = peer.argv(port, port, project)
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=project,
                    env=project_env(PYTHONUNBUFFERED="1"),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            ports.append(port)
        for port, proc in zip(ports, procs):
            _wait_port(port, proc)
        pids = [pid for proc in procs for pid in _tree(proc.pid)]
        _settle(pids, timeout=20)
        base = _rss(pids)
        shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
        for port, share in zip(ports, shares):
            url = f"http://127.0.0.1:{port}"
            groups.append(load.Holders(f"ws://127.0.0.1:{port}/room", url, sources, None, most=share))
        progress(f"idle at scale: {peer.label} ({processes} processes, a port each): opening {connections:,}")
        started = time.monotonic()
        held = _hold(list(zip(groups, shares)), open_timeout)
        result["open_seconds"] = round(time.monotonic() - started, 1)
        pids = [pid for proc in procs for pid in _tree(proc.pid)]
        _settle(pids, timeout=60)
        result.update(_figures(pids, base, held, connections, *groups))
        result["broadcast"] = _broadcast(groups, ports, lambda p: f"http://127.0.0.1:{p}", 128)
        _say(result)
    except Exception as exc:  # reported in the row
        result["problems"].append(f"{exc!r}")
        progress(f"idle at scale: {peer.label}: PROBLEM {exc!r}")
    finally:
        for proc in procs:
            _stop(proc)
        for log in logs:
            log.close()
        for holders in groups:
            holders.close()
    return result


def _figures(pids: list[int], base: int, held: int, target: int, *groups: load.Holders) -> dict:
    rss = _rss(pids)
    errors: dict[str, int] = {}
    for holders in groups:
        for reason, n in holders.errors.items():
            errors[reason] = errors.get(reason, 0) + n
    return {
        "target": target,
        "open": held,
        "processes": len(pids),
        "rss": rss,
        "pss": _pss(pids),
        "base_rss": base,
        "per_conn": (rss - base) / held if held else None,
        "errors": errors,
    }


def _say(result: dict) -> None:
    b = result.get("broadcast") or {}
    progress(
        f"idle at scale: {result['label']} ({result['kind']}): {result['open']:,}/{result['target']:,} held, "
        f"server RSS {result['rss'] / MIB:,.0f} MiB in {result['processes']} processes "
        f"({(result['per_conn'] or 0) / 1000:.2f} KB per connection); broadcast {b.get('delivered', 0):,}/"
        f"{b.get('armed', 0):,} delivered, last after {b.get('ms_to_last') or 0:,.0f} ms"
    )


def run(
    best_peer: Peer | None,
    project: pathlib.Path,
    work: pathlib.Path,
    sources,
    connections: int = 100_000,
    workers: int = 6,
    logged_in: bool = True,
) -> dict:
    """asok_green (logged-in and anonymous connections), then ``best_peer``; the dict for the report."""
    results = [run_green(project, work, sources, connections, workers, logged_in=False)]
    if logged_in:
        results.append(run_green(project, work, sources, connections, workers, logged_in=True))
    if best_peer is not None:
        results.append(run_peer(best_peer, project, work, sources, connections, workers))
    return {"connections": connections, "workers": workers, "results": results}
