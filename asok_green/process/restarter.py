"""``asok serve --gevent`` after its first restart: the small parent that keeps the PID and the port.

The first SIGHUP reaches the serving process itself (``asok_green.process.handoff``): it
starts a successor on its listening socket, drains, then replaces its own image
with this module, keeping its PID (the one systemd watches) and the socket.
From then on this parent, never monkey-patched and without the app, holds the
listening socket and one serving process at a time:

* SIGHUP: start a new server process on the socket, wait until it serves, then
  send the old one SIGHUP (it drains: ``asok_green.process.drain``). If the new one
  exits before it serves (the app does not load), the old one keeps serving.
  The new process links up with the old one on the restart channel
  (``asok_green.process.restart_link``), so they are one server while both run.
  A SIGHUP that comes while a restart or its drain is under way is carried out
  once the old process has exited: one more restart, however many came.
* SIGTERM / SIGINT: close the socket, pass SIGTERM on, wait, exit 0 if the
  server exited cleanly.
* The serving process dying on its own: exit with its status (systemd's
  ``Restart=`` brings the service back).

Its children are found with ``waitpid``, not ``Popen``: the first of them was
started by the process this one replaced.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from ..server.listeners import READY_FD_ENV
from . import restart_link
from .logs import announce

#: Signals blocked from the moment a server process turns into this parent until it handles them.
HELD_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
#: Seconds a new server process has to load the app and serve.
READY_TIMEOUT = 60.0
#: Seconds stopping waits for the server processes before killing them (each bounds its own shutdown).
STOP_TIMEOUT = 60.0


class StartFailed(RuntimeError):
    """A server process exited (or hung) before it served; ``code`` is its exit status."""

    def __init__(self, code: int):
        """Record the process' exit status."""
        super().__init__(f"exited with {code} before it served")
        self.code = code


def start_ready(
    argv: Sequence[str],
    pass_fds: Sequence[int],
    env: dict[str, str],
    should_stop: Callable[[], bool] = lambda: False,
    timeout: float = READY_TIMEOUT,
) -> subprocess.Popen:
    """Start ``argv`` and wait until it reports that it serves; :class:`StartFailed` if it exits first.

    The process reports through a pipe named by ``ASOK_GREEN_READY_FD``.
    Returns early (with the process running) when ``should_stop()`` turns true.
    """
    read_fd, write_fd = os.pipe()
    try:
        child = subprocess.Popen(list(argv), env={**env, READY_FD_ENV: str(write_fd)}, pass_fds=(*pass_fds, write_fd))
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not should_stop():
            readable, _, _ = select.select([read_fd], [], [], 0.2)
            if readable:
                if os.read(read_fd, 1):
                    return child
                break  # it closed its end without a word: it is exiting
    finally:
        os.close(read_fd)
    if should_stop():
        return child
    try:
        code = child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        code = child.wait()
    raise StartFailed(code)


def exit_status(status: int) -> int:
    """A ``waitpid`` status as ``Popen.returncode`` spells it (negative: killed by that signal)."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class Restarter:
    """Holds the listening socket ``fd`` and the serving process ``pid``; replaces it on SIGHUP."""

    def __init__(self, fd: int, pid: int, argv: Sequence[str], env: dict[str, str] | None = None, reload: bool = False):
        """``argv`` starts a server process on ``fd`` (``python -m asok_green serve --fd FD ...``).

        ``reload``: a SIGHUP came during the restart that made this parent; it restarts once more.
        """
        self.fd = fd
        self.serving = pid
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.env.pop(restart_link.PEER_ENV, None)
        #: Replaced server processes that have not exited yet.
        self.draining: set[int] = set()
        #: Kept so that their finalizers never reap a child behind ``waitpid``'s back.
        self._started: dict[int, subprocess.Popen] = {}
        self._signal: int | None = None
        self._reload = reload
        self._waiting_logged = False

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (or the server's own exit); the exit status."""
        signal.signal(signal.SIGHUP, self._on_hangup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        while self._signal is None:
            code = self._reap()
            if code is not None:
                announce(
                    f"the server process {self.serving} exited with {code}",
                    "server_exited",
                    "ERROR",
                    sys.stderr,
                    pid=self.serving,
                    exit_code=code,
                )
                self.stop()
                return code or 1
            if self._reload and self._ready_to_reload():
                self._reload = False
                self.reload()
            time.sleep(0.1)
        return self.stop()

    def _on_hangup(self, signum: int, frame: object) -> None:
        self._reload = True

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signal = signum

    def _ready_to_reload(self) -> bool:
        """True once no replaced process still drains; a SIGHUP meanwhile waits (and is said to)."""
        if not self.draining:
            self._waiting_logged = False
            return True
        if not self._waiting_logged:
            self._waiting_logged = True
            pids = ", ".join(str(pid) for pid in sorted(self.draining))
            announce(
                f"SIGHUP while process {pids} drains: restarting once more when it has exited",
                "restart_pending",
                pid=self.serving,
            )
        return False

    def _reap(self) -> int | None:
        """Collect exited children; the serving process' status if it is one of them."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            self.draining.discard(pid)
            self._started.pop(pid, None)
            if pid == self.serving:
                return exit_status(status)

    def reload(self) -> None:
        """Start a new server process; once it serves, the current one drains. On failure, keep it."""
        old = self.serving
        env = restart_link.successor_env(old, self.env)  # the new process links up with the old one
        try:
            new = start_ready(self.argv, (self.fd,), env, lambda: self._signal is not None)
        except (StartFailed, OSError) as exc:
            announce(
                f"restart failed: the new server process {exc}; process {old} keeps serving",
                "restart_failed",
                "ERROR",
                sys.stderr,
                pid=old,
            )
            return
        self._started[new.pid] = new
        self.serving = new.pid
        self.draining.add(old)
        _signal(old, signal.SIGHUP)
        announce(f"restarted: process {new.pid} serves, {old} drains", "restarted", pid=new.pid, old_pid=old)

    def stop(self) -> int:
        """Close the socket, SIGTERM every server process, wait for them; 0 if the serving one exited cleanly."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        waiting = {self.serving, *self.draining}
        for pid in waiting:
            _signal(pid, signal.SIGTERM)
        status = 0
        deadline = time.monotonic() + STOP_TIMEOUT
        while waiting:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if time.monotonic() > deadline:
                    for left in waiting:
                        _signal(left, signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(0.05)
                continue
            waiting.discard(pid)
            if pid == self.serving and exit_status(raw) not in (0, -signal.SIGTERM):
                status = 1
        restart_link.remove_channel_dir(self.env)
        return status


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def parent_argv(fd: int, pid: int, server_argv: Sequence[str], reload: bool = False) -> list[str]:
    """The command line that turns a serving process into the restarting parent of ``pid``.

    ``reload``: the parent restarts ``pid`` once more as soon as it runs (a SIGHUP came meanwhile).
    """
    return [
        sys.executable,
        "-m",
        "asok_green.process.restarter",
        "--fd",
        str(fd),
        "--pid",
        str(pid),
        *(["--reload"] if reload else []),
        "--",
        *server_argv,
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m asok_green.process.restarter --fd FD --pid PID [--reload] -- SERVER_ARGV...``."""
    parser = argparse.ArgumentParser(prog="python -m asok_green.process.restarter")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("server_argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    server_argv = args.server_argv[1:] if args.server_argv[:1] == ["--"] else args.server_argv
    sys.exit(Restarter(args.fd, args.pid, server_argv, reload=args.reload).run())


if __name__ == "__main__":
    main()
