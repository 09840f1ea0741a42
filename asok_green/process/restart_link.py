"""Where the two processes of a restart meet: the channel's private directory, its socket paths, joining it.

The first SIGHUP makes a directory only this user can enter
(``ASOK_GREEN_RESTART_DIR``, inherited by every later process and by the
restarting parent). A process waits for its successor on
``<dir>/<pid>.<hub>.sock``; whoever starts the successor names the process it
replaces in ``ASOK_GREEN_RESTART_PEER`` (``<dir>/<pid>``), and the successor
connects there once it listens, before it says that it serves. Each hub whose
node is the single process becomes an :class:`asok_green.cluster.local_node.LocalNode`;
a hub already in a Redis cluster (or driving an Asok adapter) keeps its node:
Redis joins the two processes already.

This module imports no gevent at import time: the restarting parent, never
monkey-patched, uses its names.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

logger = logging.getLogger("asok_green")

#: The private directory of a service's restart channels.
RESTART_DIR_ENV = "ASOK_GREEN_RESTART_DIR"
#: Set for a new process: where the process it replaces waits (``<dir>/<pid>``, without the hub's suffix).
PEER_ENV = "ASOK_GREEN_RESTART_PEER"

#: Longest path a Unix socket may have (``sun_path``, less the terminating NUL and some room).
_MAX_SOCKET_PATH = 100


def channel_dir() -> str:
    """The service's channel directory, made (mode 0700) and put in the environment on first use."""
    directory = os.environ.get(RESTART_DIR_ENV)
    if directory and os.path.isdir(directory):
        return directory
    directory = tempfile.mkdtemp(prefix="asok_green_restart_")
    if len(directory) + 24 > _MAX_SOCKET_PATH:  # a long TMPDIR: socket paths would not fit
        shutil.rmtree(directory, ignore_errors=True)
        directory = tempfile.mkdtemp(prefix="asok_green_restart_", dir="/tmp")
    os.environ[RESTART_DIR_ENV] = directory
    return directory


def peer_base(pid: int, env: dict[str, str] | None = None) -> str | None:
    """Where process ``pid`` waits for its successor (``<dir>/<pid>``); None without a channel directory."""
    directory = (os.environ if env is None else env).get(RESTART_DIR_ENV)
    return os.path.join(directory, str(pid)) if directory else None


def successor_env(pid: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that replaces ``pid``: ``env`` (or this one's) naming ``pid``'s channel."""
    env = dict(os.environ if env is None else env)
    base = peer_base(pid, env)
    if base is not None:
        env[PEER_ENV] = base
    else:
        env.pop(PEER_ENV, None)
    return env


def socket_path(base: str, index: int) -> str:
    """The socket of hub number ``index`` of the process whose channel is ``base``."""
    return f"{base}.{index}.sock"


def join(server: Any, peer: str | None = None, listen: bool = True) -> list:
    """Make each single-process hub of ``server`` a node of the restart channel; the nodes made.

    With ``listen`` each waits for this process' successor; with ``peer`` (a
    ``<dir>/<pid>`` base) each links to the process this one replaces (may
    yield, a few seconds at most). A channel that cannot be opened is logged
    and left out: the processes then serve as two, as without it.
    """
    from ..cluster.local_node import LocalNode
    from ..core.node import SINGLE_PROCESS

    base = os.path.join(channel_dir(), str(os.getpid())) if listen else None
    nodes = []
    for index, hub in enumerate(server.hubs):
        if hub.node is not SINGLE_PROCESS:
            continue
        node = LocalNode(hub, socket_path(base, index) if base else None)
        try:
            node.start()
        except OSError as exc:
            logger.warning("restart channel: cannot listen at %s (%s)", node.listen_path, exc)
            node = LocalNode(hub)
        hub.node = node
        nodes.append(node)
        if peer:
            node.connect(socket_path(peer, index))
    return nodes


def leave(server: Any, nodes: list) -> None:
    """Undo :func:`join`: each hub back to the single-process node, each node stopped."""
    from ..core.node import SINGLE_PROCESS

    for hub in server.hubs:
        if hub.node in nodes:
            hub.node = SINGLE_PROCESS
    for node in nodes:
        node.stop()


def remove_channel_dir(env: dict[str, str] | None = None) -> None:
    """Remove the channel directory named in ``env`` (or this environment), if any."""
    directory = (os.environ if env is None else env).get(RESTART_DIR_ENV)
    if directory and os.path.basename(directory).startswith("asok_green_restart_"):
        shutil.rmtree(directory, ignore_errors=True)
