"""Keep-alive: ping clients that went quiet, close the ones that stay silent.

One greenlet per server sweeps every connection: a client silent for
``ping_interval`` seconds is pinged (one ping frame, encoded once for all), and a
client silent for ``ping_interval + ping_timeout`` is closed with 1011, so a
vanished phone does not stay "online" forever. Any frame from the client,
pong included, counts as a sign of life.

A sweep looks at every connection once per period, a slice at a time
(``SLICE_SECONDS`` apart): clients that connected together are pinged, and
answer, spread over the period instead of all in one round, so their pongs
never arrive as one burst.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from time import monotonic
from typing import TYPE_CHECKING, Any

import gevent

from ..core.log_fields import conn_fields
from ..core.logs import flush_suppressed
from ..protocol.frames import CLOSE_INTERNAL_ERROR, OP_PING, encode_frame

if TYPE_CHECKING:
    from .connection import Connection

logger = logging.getLogger("asok_green")

PING_FRAME = encode_frame(OP_PING, b"")
TIMEOUT_REASON = "keepalive timeout: no answer to ping"

#: Seconds between two slices of a sweep.
SLICE_SECONDS = 0.5


def sweep(connections: Iterable[Connection], now: float, interval: float, timeout: float) -> tuple[int, int]:
    """Ping the quiet connections and close the silent ones; returns ``(pinged, closed)``."""
    pinged = closed = 0
    for conn in connections:
        if conn.closed:
            continue
        silent = now - conn.last_seen
        if silent >= interval + timeout:
            logger.info(
                "closing %s on %s: silent for %.0fs",
                conn.addr,
                conn.path,
                silent,
                extra=conn_fields(conn, "silent_closed", close_code=CLOSE_INTERNAL_ERROR, cause="no pong"),
            )
            # The peer is presumed gone: do not wait long for its close frame.
            conn.close(CLOSE_INTERNAL_ERROR, TIMEOUT_REASON, timeout=min(1.0, timeout))
            closed += 1
        elif silent >= interval:
            conn.send_frame(PING_FRAME)
            pinged += 1
    return pinged, closed


def sweep_period(interval: float, timeout: float) -> tuple[float, int]:
    """``(period, slices)``: every connection is looked at once per period, in that many slices."""
    period = max(0.05, min(interval, timeout) / 2)
    return period, max(1, round(period / SLICE_SECONDS))


def run(server: Any) -> None:
    """Sweep the hub ``server``'s connections for as long as the greenlet lives; a sweep that raises is logged."""
    limits = server.limits
    period, slices = sweep_period(limits.ping_interval, limits.ping_timeout)
    part = 0
    while True:
        gevent.sleep(period / slices)
        try:
            # The n-th slice of the connections open now: a connection that
            # moves up when others close may wait one more period to be looked at.
            connections = server.connections()
            count = len(connections)
            chosen = connections[part * count // slices : (part + 1) * count // slices]
            _, closed = sweep(chosen, monotonic(), limits.ping_interval, limits.ping_timeout)
            flush_suppressed(logger, limits)
        except Exception:
            # One bad connection must not end keep-alive for every other.
            logger.exception("keep-alive sweep failed: going on")
            continue
        finally:
            part = (part + 1) % slices
        server.stats["keepalive_closed"] += closed
