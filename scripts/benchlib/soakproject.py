"""The Asok project the soak serves: the bench project plus three routes that count and report.

``/soak/echo``
    echoes every message (the hostile clients' target).
``/soak/room``
    every connection is a subscriber; ``!bcast COUNT SIZE`` broadcasts COUNT
    JSON messages to the others and answers ``!done COUNT``
    (the control protocol of scripts/peers/__init__.py).
``/soak/stats``
    any message is answered with the server's own view, as JSON:
    ``greenlets`` (live greenlet objects, found by the garbage collector),
    ``handled`` (messages the soak routes' handlers ran for), ``broadcasts``
    and ``connections`` (open WebSockets, per the hub).
"""

from __future__ import annotations

import json
import pathlib
import time

import tests.asok_project as asok_project  # noqa: E402,I001  (benchlib.project put the repo on sys.path)

from .project import BENCH_ROUTES
from .wsclient import OP_TEXT, RawClient, Timeout, client_frame

SOAK_ROUTES = """
import gc as _gc
import json as _json

from greenlet import greenlet as _greenlet

SOAK = {"handled": 0, "broadcasts": 0}


@ws.on("/soak/echo")
def soak_echo(conn, message):
    SOAK["handled"] += 1
    conn.send(message)


@ws.on("/soak/room")
def soak_room(conn, message):
    SOAK["handled"] += 1
    if isinstance(message, str) and message.startswith("!bcast "):
        _, count, size = message.split()
        data = "x" * int(size)
        for seq in range(int(count)):
            ws.broadcast_json("/soak/room", {"seq": seq, "data": data}, exclude=conn)
        SOAK["broadcasts"] += int(count)
        conn.send(f"!done {count}")


@ws.on("/soak/stats")
def soak_stats(conn, message):
    SOAK["handled"] += 1
    greenlets = sum(1 for o in _gc.get_objects() if isinstance(o, _greenlet))
    conn.send(_json.dumps({**SOAK, "greenlets": greenlets, "connections": len(ws.connections())}))
"""


def make_soak_project(root: pathlib.Path) -> pathlib.Path:
    """Create the soak project in ``root`` (a real Asok project, DEBUG off) and return its path."""
    return asok_project.make_project(root, extra_wsgi=BENCH_ROUTES + SOAK_ROUTES, debug=False)


def server_stats(port: int, origin: str, timeout: float = 30.0) -> dict | None:
    """Ask ``/soak/stats``; None if the server does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        client = RawClient(port, "/soak/stats", origin, timeout=timeout)
    except (OSError, ConnectionError, Timeout):
        return None
    try:
        if not client.send_all(client_frame(OP_TEXT, b"stats"), deadline):
            return None
        while True:
            for opcode, payload in client.frames(deadline):
                if opcode == OP_TEXT:
                    return json.loads(payload)
            if client.eof:
                return None
    except (Timeout, OSError, ValueError):
        return None
    finally:
        client.close()
