"""Listening sockets that outlive the server processes serving them.

A process that keeps a listening socket open while server processes come and
go loses no connection: a client that connects between two servers waits in
the socket's backlog for the next one. Closing a listener instead (even one of
several ``SO_REUSEPORT`` siblings) resets the connections queued in it.
"""

from __future__ import annotations

import os
import socket

#: The environment variable through which a server process reports that it serves.
READY_FD_ENV = "ASOK_GREEN_READY_FD"


def listen(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """An inheritable socket listening on ``host:port`` (``reuse_port``: other sockets may bind it too)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def inherited_listener(fd: int) -> socket.socket:
    """The listening socket a parent passed down as file descriptor ``fd``."""
    return socket.socket(fileno=fd)


def tell_parent_ready() -> None:
    """Tell the process that started this one (through ``ASOK_GREEN_READY_FD``) that it serves."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except (OSError, ValueError):
            pass
