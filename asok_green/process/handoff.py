"""The first restart of ``asok serve --gevent``: the serving process hands its port to a successor.

On SIGHUP the process starts a successor on a copy of its listening socket
and waits until it serves (the app loaded). If the successor fails, this
process logs why and serves on. Otherwise it drains (``asok_green.process.drain``:
no more accepts, HTTP requests finish, WebSockets close with 1012 over
``WS_DRAIN_SECONDS``), then becomes the restarting parent
(``asok_green.process.restarter``) in place: same PID, same socket, none of the app's
memory. The listening socket never closes, so no client is refused.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .drain import drain
from .restarter import HELD_SIGNALS, StartFailed, parent_argv, start_ready

logger = logging.getLogger("asok_green")


def hand_over(server: Any, server_argv: Callable[[int], Sequence[str]]) -> None:
    """Restart ``server`` (a GreenServer) in a new process started with ``server_argv(fd)``.

    Returns only if the new process failed: this one keeps serving.
    """
    if server.draining or server.stopped.is_set() or getattr(server, "_restarting", False):
        return
    server._restarting = True
    fd = os.dup(server.socket.fileno())
    os.set_inheritable(fd, True)
    argv = list(server_argv(fd))
    try:
        successor = start_ready(argv, (fd,), dict(os.environ), server.stopped.is_set)
    except (StartFailed, OSError) as exc:
        logger.error(
            "restart failed: the new server process %s; this process (%d) keeps serving",
            exc,
            os.getpid(),
            extra={"event": "restart_failed", "pid": os.getpid()},
        )
        os.close(fd)
        server._restarting = False
        return
    logger.info(
        "restarted: process %d serves, %d drains",
        successor.pid,
        os.getpid(),
        extra={"event": "restarted", "pid": successor.pid, "old_pid": os.getpid()},
    )
    if server.stopped.is_set():  # SIGTERM while the successor loaded: it stops too
        successor.terminate()
        successor.wait()
        return
    if drain(server, stop=False):
        _become_parent(fd, successor.pid, argv)
    successor.terminate()  # a SIGTERM took over the drain: the whole service stops


def _become_parent(fd: int, pid: int, server_argv: Sequence[str]) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Held until the parent's handlers are in place (the mask survives exec): a SIGHUP or
    # SIGTERM in between would otherwise end the process by its default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    os.execv(sys.executable, parent_argv(fd, pid, server_argv))
