"""A WebSocket's life after its handshake: registration, on_connect, messages, on_disconnect, release.

:func:`serve_connection` takes a connection from the greenlet that upgraded
it; :func:`end_connection` follows its last read. Under ``GreenServer`` the
upgrading greenlet ends after on_connect and the connection is read from its
socket's watcher (``Connection.watch``); under other servers (gunicorn's
worker) that greenlet serves the connection for its whole life.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import gevent

from ..core.log_fields import conn_fields
from ..core.routing import Route
from ..protocol.frames import CLOSE_TRY_AGAIN
from .connection import Connection
from .hub import WebSocketServer

__all__ = ["call_handler", "end_connection", "serve_connection"]

logger = logging.getLogger("asok_green")


def serve_connection(hub: WebSocketServer, conn: Connection, route: Route) -> None:
    """Own ``conn`` from registration to release: on_connect, messages, on_disconnect.

    The connection takes the slot its handshake reserved (in this greenlet); with
    none left it is closed with 1013 (try again later). A connection that can be
    watched is handed to its socket's read watcher after on_connect, and this
    returns at once; otherwise this reads it until it ends. Whatever raises, the
    connection ends: unregistered, its socket released.
    """
    registered = watched = False
    try:
        handshake = gevent.getcurrent()
        registered = hub.register(conn, reservation=handshake)
        if isinstance(handshake, gevent.Greenlet):
            handshake.unlink(hub.release_slot)  # the slot is used (or was never held)
        if not registered:
            logger.warning(
                "closing %s on %s: every connection slot is taken",
                conn.addr,
                conn.path,
                extra=conn_fields(conn, "connection_refused", close_code=CLOSE_TRY_AGAIN, cause="limit"),
            )
            conn.close(CLOSE_TRY_AGAIN, "too many connections", timeout=0)
            return
        if route.on_connect is not None:
            call_handler(route.on_connect, conn, "connect")
        if conn.can_watch:
            conn.watch(route.on_message, functools.partial(end_connection, hub, conn, route))
            watched = True
        else:
            conn.run(route.on_message)
    finally:
        if not watched:
            if registered:
                end_connection(hub, conn, route)
            else:
                conn.finish(0)


def end_connection(hub: WebSocketServer, conn: Connection, route: Route) -> None:
    """What follows the last read: unregister, on_disconnect, then flush (bounded) and release.

    The socket is released and the slot given back even if any step raises.
    """
    try:
        try:
            hub.unregister(conn)
        finally:
            if route.on_disconnect is not None:
                call_handler(route.on_disconnect, conn, "disconnect")
    finally:
        conn.finish(hub.limits.flush_timeout)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "closed %s on %s: %s",
                conn.addr,
                conn.path,
                conn.close_code,
                extra=conn_fields(conn, "closed", close_code=conn.close_code, reason=conn.close_reason),
            )


def call_handler(handler: Any, conn: Connection, what: str) -> None:
    """Run the on_connect or on_disconnect ``handler`` on ``conn``: timed, counted, and logged if it raises."""
    started = time.monotonic()
    try:
        handler(conn)
    except Exception:
        logger.exception(
            "error in %s handler for %s (from %s)",
            what,
            conn.path,
            conn.addr,
            extra=conn_fields(conn, "handler_error", handler=what),
        )
    finally:
        conn.server.handler_times.handled(handler, time.monotonic() - started)
        try:
            conn.server.after_handler()
        except Exception:
            logger.exception("releasing after the %s handler for %s failed", what, conn.path)
