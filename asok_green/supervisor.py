"""``--workers N``: N server processes on one port, kept running by this (unpatched) parent.

Each worker is ``python -m asok_green.serve_worker``: a gevent process with its
own listening socket on the same port (``SO_REUSEPORT``, so the kernel spreads
new connections across them) and a node of the Redis cluster, which makes the
workers one server to their clients. The parent starts them one at a time and
waits for each to listen, restarts one that dies, and on SIGTERM or SIGINT
passes SIGTERM on and waits for them to close their WebSockets.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque

from .cli import serve_argv
from .cluster import WORKERS_ENV
from .jsonlog import announce
from .metrics import METRICS_DIR_ENV

#: The environment variable through which a worker reports that it listens.
READY_FD_ENV = "ASOK_GREEN_READY_FD"

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0


class WorkerFailed(RuntimeError):
    """A worker exited before it listened; ``code`` is its exit status."""

    def __init__(self, code: int):
        """Record the worker's exit status."""
        super().__init__(f"worker exited with {code} before listening")
        self.code = code


def worker_argv(host: str, port: int, app: str, log_level: str) -> list[str]:
    """The command line of one worker process."""
    return serve_argv(host, port, app, log_level, entry=("asok_green.serve_worker",))


class Supervisor:
    """Starts ``workers`` processes serving ``app`` on ``host:port`` and keeps them running."""

    def __init__(self, workers: int, host: str, port: int, app: str, log_level: str = "info"):
        """Nothing starts before :meth:`run`."""
        self.workers = workers
        self.argv = worker_argv(host, port, app, log_level)
        self.url = f"http://{host}:{port}"
        self.env = {**os.environ, WORKERS_ENV: str(workers)}
        #: Where each worker writes its metrics, so the one that answers a scrape sums them all.
        self.metrics_dir = os.environ.get(METRICS_DIR_ENV) or tempfile.mkdtemp(prefix="asok_green_metrics_")
        self._own_metrics_dir = METRICS_DIR_ENV not in os.environ
        self.env[METRICS_DIR_ENV] = self.metrics_dir
        self.children: list[subprocess.Popen] = []
        self._signal: int | None = None
        self._restarts: deque = deque()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status for the command line."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            for _ in range(self.workers):
                if self._signal is not None:
                    return self.stop()
                self.children.append(self._start_worker())
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
            for i, child in enumerate(self.children):
                if child.poll() is not None and self._signal is None:
                    replacement = self._replace(child)
                    if replacement is None:
                        self.stop()
                        return 1
                    self.children[i] = replacement
        return self.stop()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signal = signum

    def _start_worker(self) -> subprocess.Popen:
        """Start one worker and wait until it listens; :class:`WorkerFailed` if it exits first."""
        read_fd, write_fd = os.pipe()
        try:
            env = {**self.env, READY_FD_ENV: str(write_fd)}
            child = subprocess.Popen(self.argv, env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        try:
            deadline = time.monotonic() + _READY_TIMEOUT
            while time.monotonic() < deadline and self._signal is None:
                readable, _, _ = select.select([read_fd], [], [], 0.2)
                if readable:
                    if os.read(read_fd, 1):
                        return child
                    break  # the worker closed its end without a word: it is exiting
        finally:
            os.close(read_fd)
        if self._signal is not None:
            return child
        try:
            code = child.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        raise WorkerFailed(code)

    def _replace(self, child: subprocess.Popen) -> subprocess.Popen | None:
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
            return self._start_worker()
        except WorkerFailed:
            return None

    def stop(self) -> int:
        """SIGTERM every worker, wait for them (bounded, then SIGKILL); 0 if all stopped cleanly."""
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


def supervise(workers: int, host: str, port: int, app: str, log_level: str = "info") -> int:
    """Run ``workers`` processes on ``host:port`` until SIGTERM or SIGINT; the exit status."""
    if port == 0:
        print("asok_green: --workers needs a fixed --port (every worker listens on the same one)", file=sys.stderr)
        return 2
    return Supervisor(workers, host, port, app, log_level).run()
