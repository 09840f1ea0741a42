"""The last minutes of a server process that a restart replaces.

A successor already serves the same listening socket. This process stops
accepting, lets the HTTP requests in flight finish, and closes its WebSockets
with 1012 (Service Restart) in batches spread over ``WS_DRAIN_SECONDS``, each
at a random moment within its share, so the clients reconnect to the
successor a few at a time instead of all at once.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import gevent

logger = logging.getLogger("asok_green")

#: The close code that tells a client the server restarts and it should reconnect (RFC 6455, IANA registry).
CLOSE_SERVICE_RESTART = 1012
#: Batches per second of the drain period: small enough to spread reconnections, big enough to be cheap.
BATCHES_PER_SECOND = 10


def drain_schedule(count: int, seconds: float, rng: random.Random) -> list[tuple[float, int, int]]:
    """When to close which connections: ``(delay, start, stop)`` slices of ``count`` connections.

    The period is cut into equal shares, one batch each, and each batch closes
    at a random moment within its share, so the delays are in order.
    """
    if count <= 0:
        return []
    batches = max(1, min(count, math.ceil(seconds * BATCHES_PER_SECOND)))
    size = math.ceil(count / batches)
    share = max(0.0, seconds) / batches
    return [
        (share * i + rng.random() * share, start, min(count, start + size))
        for i, start in enumerate(range(0, count, size))
    ]


def drain(server: Any, seconds: float | None = None, rng: random.Random | None = None, *, stop: bool = True) -> bool:
    """Stop accepting, close every WebSocket with 1012 over ``seconds``, wait for HTTP requests.

    ``server`` is a :class:`~asok_green.server.handler.GreenServer`. Connections still
    open ``WS_SHUTDOWN_TIMEOUT`` seconds after the last batch, and requests
    still running then, are dropped. With ``stop`` the server is then marked
    stopped (its process exits). False if a shutdown (SIGTERM) took over meanwhile.
    """
    if server.stopped.is_set() or server.draining or server.shutting_down:
        return False
    server.draining = True
    rng = rng or random.Random()
    hubs = server.hubs
    limits = hubs[0].limits if hubs else None
    if seconds is None:
        seconds = limits.drain_seconds if limits else 0.0
    grace = max(hub.limits.shutdown_timeout for hub in hubs) if hubs else 1.0
    server.close()
    connections = [conn for hub in hubs for conn in hub.connections()]
    rng.shuffle(connections)
    logger.info(
        "restarting: a new process serves; closing %d WebSocket(s) with 1012 over %.1fs",
        len(connections),
        seconds,
        extra={"event": "draining", "connections": len(connections), "seconds": seconds},
    )
    started = time.monotonic()
    for delay, first, end in drain_schedule(len(connections), seconds, rng):
        gevent.sleep(max(0.0, started + delay - time.monotonic()))
        if server.stopped.is_set():
            return False
        for conn in connections[first:end]:
            conn.close(CLOSE_SERVICE_RESTART, "server restarting")
    for hub in hubs:  # handshakes that were under way when the listener closed
        for conn in hub.connections():
            conn.close(CLOSE_SERVICE_RESTART, "server restarting")
    deadline = max(time.monotonic(), started + seconds) + grace
    while time.monotonic() < deadline and (server.connection_count() or server.requests_in_flight):
        if server.stopped.is_set():
            return False
        gevent.sleep(0.02)
    if server.stopped.is_set() or server.shutting_down:
        return False
    if server.connection_count() or server.requests_in_flight:
        logger.warning(
            "restarting: dropping %d WebSocket(s) and %d request(s) still open",
            server.connection_count(),
            server.requests_in_flight,
        )
    for hub in hubs:
        hub.stop()
    logger.info("drained", extra={"event": "drained"})
    if stop:
        server.stopped.set()
    return True
