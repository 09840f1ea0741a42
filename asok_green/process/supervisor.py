"""``--workers N``: N server processes on one port, kept running by this (unpatched) parent.

Each worker is ``python -m asok_green.process.serve_worker``: a gevent process serving
a listening socket of its own on the same port (``SO_REUSEPORT``, so the kernel
spreads new connections across them) and a node of the Redis cluster, which
makes the workers one server to their clients. The parent binds those sockets
and keeps them, one per worker slot, so a slot's socket outlives the workers
that serve it: a worker that dies or is replaced loses none of the connections
waiting in its backlog. The parent starts the workers one at a time and waits
for each to listen, restarts one that dies, and on SIGTERM or SIGINT passes
SIGTERM on and waits for them to close their WebSockets. On SIGHUP it replaces
them one at a time: a new worker on the slot's socket, and once it serves, the
old one drains (``asok_green.process.drain``) and exits before the next slot's turn. A
new worker that fails to start leaves the old ones serving.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque

from ..cluster.redis_node import WORKERS_ENV
from ..ops.metrics import METRICS_DIR_ENV
from ..server.listeners import READY_FD_ENV, listen
from .command_lines import serve_argv
from .logs import announce
from .restarter import StartFailed, start_ready

__all__ = ["READY_FD_ENV", "Supervisor", "WorkerFailed", "main", "supervise", "supervisor_argv", "worker_argv"]

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0
#: Seconds a replaced worker gets to drain before it is killed, on top of its own drain period.
_DRAIN_MARGIN = 30.0

#: A worker exited before it listened; ``code`` is its exit status.
WorkerFailed = StartFailed


def worker_argv(host: str, port: int, app: str, log_level: str, fd: int | None = None) -> list[str]:
    """The command line of one worker process (serving the inherited socket ``fd`` if given)."""
    argv = serve_argv(host, port, app, log_level, entry=("asok_green.process.serve_worker",))
    return argv + ["--fd", str(fd)] if fd is not None else argv


class Supervisor:
    """Starts ``workers`` processes serving ``app`` on ``host:port`` and keeps them running."""

    def __init__(self, workers: int, host: str, port: int, app: str, log_level: str = "info"):
        """Nothing starts before :meth:`run`."""
        self.workers = workers
        self.host, self.port, self.app, self.log_level = host, port, app, log_level
        self.argv = worker_argv(host, port, app, log_level)
        self.url = f"http://{host}:{port}"
        self.env = {**os.environ, WORKERS_ENV: str(workers)}
        #: Where each worker writes its metrics, so the one that answers a scrape sums them all.
        self.metrics_dir = os.environ.get(METRICS_DIR_ENV) or tempfile.mkdtemp(prefix="asok_green_metrics_")
        self._own_metrics_dir = METRICS_DIR_ENV not in os.environ
        self.env[METRICS_DIR_ENV] = self.metrics_dir
        self.children: list[subprocess.Popen] = []
        #: One listening socket per worker slot, held here for as long as the server runs.
        self.listeners: list = []
        self._signal: int | None = None
        self._reload = False
        self._restarts: deque = deque()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status for the command line."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            self.listeners = [listen(self.host, self.port, reuse_port=True) for _ in range(self.workers)]
        except OSError as exc:
            print(f"asok_green: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}", file=sys.stderr)
            self.stop()
            return 1
        try:
            for slot in range(self.workers):
                if self._signal is not None:
                    return self.stop()
                self.children.append(self._start_worker(slot))
        except WorkerFailed as exc:
            self.stop()
            return exc.code or 1
        pids = ", ".join(str(child.pid) for child in self.children)
        announce(
            f"serving {self.url} with {self.workers} worker processes ({pids}), HTTP and WebSocket on the same port",
            "serving",
            url=self.url,
            workers=self.workers,
        )
        while self._signal is None:
            time.sleep(0.2)
            if self._reload:
                self._reload = False
                self.reload()
            for i, child in enumerate(self.children):
                if child.poll() is not None and self._signal is None:
                    replacement = self._replace(i, child)
                    if replacement is None:
                        self.stop()
                        return 1
                    self.children[i] = replacement
        return self.stop()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signal = signum

    def _on_hangup(self, signum: int, frame: object) -> None:
        self._reload = True

    def _start_worker(self, slot: int) -> subprocess.Popen:
        """Start a worker on slot ``slot``'s socket and wait until it listens (:class:`WorkerFailed` if not)."""
        fd = self.listeners[slot].fileno()
        argv = worker_argv(self.host, self.port, self.app, self.log_level, fd)
        return start_ready(argv, (fd,), self.env, lambda: self._signal is not None, _READY_TIMEOUT)

    def reload(self) -> None:
        """Replace every worker, one at a time; stop at the first new worker that fails to start."""
        for slot, old in enumerate(self.children):
            if self._signal is not None:
                return
            try:
                new = self._start_worker(slot)
            except (WorkerFailed, OSError) as exc:
                announce(
                    f"restart failed: the new worker {exc}; worker {old.pid} keeps serving",
                    "restart_failed",
                    "ERROR",
                    sys.stderr,
                    pid=old.pid,
                )
                return
            self.children[slot] = new
            announce(
                f"restarting worker {old.pid}: {new.pid} serves in its place",
                "worker_replaced",
                pid=new.pid,
                old_pid=old.pid,
            )
            old.send_signal(signal.SIGHUP)
            self._wait_drained(old)

    def _wait_drained(self, old: subprocess.Popen) -> None:
        deadline = time.monotonic() + _DRAIN_MARGIN + _drain_seconds()
        while old.poll() is None and self._signal is None:
            if time.monotonic() > deadline:
                old.kill()
            time.sleep(0.05)
        if old.poll() is None:  # SIGTERM meanwhile: it stops with the others
            self.children.append(old)
            return
        announce(f"worker {old.pid} drained and exited", "worker_drained", pid=old.pid, exit_code=old.returncode)

    def _replace(self, slot: int, child: subprocess.Popen) -> subprocess.Popen | None:
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - _RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) > _MAX_RESTARTS:
            announce(
                f"workers keep dying ({len(self._restarts)} in {_RESTART_WINDOW:.0f}s): giving up",
                "workers_failing",
                "ERROR",
                sys.stderr,
            )
            return None
        announce(
            f"worker {child.pid} exited with {child.returncode}: starting another",
            "worker_restarted",
            "WARNING",
            sys.stderr,
            pid=child.pid,
            exit_code=child.returncode,
        )
        try:
            return self._start_worker(slot)
        except WorkerFailed:
            return None

    def stop(self) -> int:
        """Close the sockets, SIGTERM every worker, wait for them (bounded, then SIGKILL); 0 if all stopped cleanly."""
        for listener in self.listeners:
            listener.close()
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        status = 0
        for child in self.children:
            try:
                code = child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            if code not in (0, -signal.SIGTERM):
                status = 1
        if self._own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return status


def _drain_seconds() -> float:
    """``WS_DRAIN_SECONDS`` from the environment (the workers may also read it from the app's config)."""
    try:
        return max(0.0, float(os.environ.get("WS_DRAIN_SECONDS") or 10))
    except ValueError:
        return 10.0


def supervise(workers: int, host: str, port: int, app: str, log_level: str = "info") -> int:
    """Run ``workers`` processes on ``host:port`` until SIGTERM or SIGINT; the exit status."""
    if port == 0:
        print("asok_green: --workers needs a fixed --port (every worker listens on the same one)", file=sys.stderr)
        return 2
    return Supervisor(workers, host, port, app, log_level).run()


def supervisor_argv(workers: int, host: str, port: int, app: str, log_level: str) -> list[str]:
    """The command of a parent that supervises ``workers`` workers and imports nothing else.

    ``asok serve --gevent --workers N`` execs into it: the ``asok`` command's
    process has the framework loaded (40 MB or so), a parent that only starts
    and watches workers needs none of it.
    """
    return [
        sys.executable,
        "-m",
        "asok_green.process.supervisor",
        "--workers",
        str(workers),
        "--host",
        host,
        "--port",
        str(port),
        "--app",
        app,
        "--log-level",
        log_level,
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m asok_green.process.supervisor``: see :func:`supervisor_argv`."""
    import argparse

    parser = argparse.ArgumentParser(prog="asok_green.process.supervisor")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    sys.exit(supervise(args.workers, args.host, args.port, args.app, args.log_level))


if __name__ == "__main__":
    main()
