"""The first restart of ``asok serve --gevent``: the serving process hands its port to a successor.

On SIGHUP the process starts a successor on a copy of its listening socket
and waits until it serves (the app loaded). If the successor fails, this
process logs why and serves on. Otherwise it drains (``asok_green.process.drain``:
no more accepts, HTTP requests finish, WebSockets close with 1012 over
``WS_DRAIN_SECONDS``), then becomes the restarting parent
(``asok_green.process.restarter``) in place: same PID, same socket, none of the app's
memory. The listening socket never closes, so no client is refused.

While both run, the two processes are one server: this one waits for its
successor on the restart channel (``asok_green.process.restart_link``), and
broadcasts and presence cross it. A SIGHUP that comes while the restart or the
drain is under way is remembered: once it ends, the parent restarts once more
(one restart, however many signals came meanwhile).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import restart_link
from .drain import drain
from .restarter import HELD_SIGNALS, StartFailed, parent_argv, start_ready

logger = logging.getLogger("asok_green")


class HandOver:
    """The SIGHUP handler of the process ``asok serve --gevent`` started (``on_hangup(server)``).

    ``server_argv(fd)`` is the command line of a successor serving the listening socket ``fd``.
    """

    def __init__(self, server_argv: Callable[[int], Sequence[str]]):
        """Nothing happens before the first SIGHUP."""
        self.server_argv = server_argv
        #: True when a SIGHUP came while a restart was under way: one more is due once it ends.
        self.again = False

    def __call__(self, server: Any) -> None:
        """Restart ``server`` (a GreenServer) in a new process; returns only if that failed (this one serves on)."""
        if server.stopped.is_set() or server.shutting_down:
            return
        if server.restarting or server.draining:
            if not self.again:
                logger.info(
                    "SIGHUP while a restart is under way: restarting once more when it ends",
                    extra={"event": "restart_pending", "pid": os.getpid()},
                )
            self.again = True
            return
        server.restarting = True
        started = None
        try:
            started = self._start_successor(server)
            while started is None and self.again and not server.stopped.is_set():
                self.again = False  # a SIGHUP came while the failed one loaded: try once more
                started = self._start_successor(server)
        finally:
            if started is None:
                server.restarting = False
        if started is None:
            return
        successor, fd, argv = started
        if server.stopped.is_set():  # SIGTERM while the successor loaded: it stops too
            successor.terminate()
            successor.wait()
            return
        if drain(server, stop=False):
            _become_parent(fd, successor.pid, argv, again=self.again)
        successor.terminate()  # a SIGTERM took over the drain: the whole service stops
        restart_link.remove_channel_dir()

    def _start_successor(self, server: Any) -> tuple[subprocess.Popen, int, list[str]] | None:
        """Start the successor and wait until it serves: it, its socket and its command line; None if it failed."""
        nodes = restart_link.join(server)  # listening before the successor starts: it links up as it comes
        fd = os.dup(server.socket.fileno())
        os.set_inheritable(fd, True)
        argv = list(self.server_argv(fd))
        env = restart_link.successor_env(os.getpid())
        try:
            successor = start_ready(argv, (fd,), env, server.stopped.is_set)
        except (StartFailed, OSError) as exc:
            logger.error(
                "restart failed: the new server process %s; this process (%d) keeps serving",
                exc,
                os.getpid(),
                extra={"event": "restart_failed", "pid": os.getpid()},
            )
            os.close(fd)
            restart_link.leave(server, nodes)
            return None
        logger.info(
            "restarted: process %d serves, %d drains",
            successor.pid,
            os.getpid(),
            extra={"event": "restarted", "pid": successor.pid, "old_pid": os.getpid()},
        )
        return successor, fd, argv


def hand_over(server: Any, server_argv: Callable[[int], Sequence[str]]) -> None:
    """Restart ``server`` once in a new process started with ``server_argv(fd)`` (see :class:`HandOver`)."""
    HandOver(server_argv)(server)


def _become_parent(fd: int, pid: int, server_argv: Sequence[str], again: bool = False) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Held until the parent's handlers are in place (the mask survives exec): a SIGHUP or
    # SIGTERM in between would otherwise end the process by its default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    os.execv(sys.executable, parent_argv(fd, pid, server_argv, reload=again))
