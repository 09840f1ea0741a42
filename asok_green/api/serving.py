"""Serving an app: the one-port server, with what the layers above the server plug into it.

:func:`make_server` and :func:`serve` (``asok_green.make_server`` and
``asok_green.serve``) build a :class:`~asok_green.server.green_server.GreenServer`
whose handler is :class:`AppHandler`: the server's own handler with the
endpoints of the upper layers (the resume client's script, the dashboard),
serving the app wrapped for metrics.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import gevent

from ..bridge import browser_client
from ..core.limits import open_files_limit
from ..ops import dashboard, jsonlog, metrics
from ..server.green_server import GreenServer
from ..server.handler import GreenHandler
from ..server.hub import WebSocketServer
from ..server.listeners import tell_parent_ready

__all__ = ["AppHandler", "make_server", "serve", "serve_dashboard"]

logger = logging.getLogger("asok_green")


def serve_dashboard(handler: GreenHandler) -> bool:
    """The dashboard's endpoint (:func:`asok_green.ops.dashboard.serve`) for the hubs ``handler`` serves."""
    return dashboard.serve(handler, handler.hubs)


class AppHandler(GreenHandler):
    """:class:`GreenHandler` with the upper layers' endpoints: the resume client's script, then the dashboard."""

    endpoints = (browser_client.serve, serve_dashboard)


def make_server(
    app: Any,
    ws: WebSocketServer | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    listener: Any = None,
    **kwargs: Any,
) -> GreenServer:
    """A started server for ``app`` and its WebSocket handlers, listening on ``host:port``.

    ``ws`` defaults to every ``WebSocketServer`` created so far (a new one bound
    to ``app`` if there is none). ``listener``, a listening socket, is used
    instead of binding ``host:port``. The app's ``WS_PORT`` is set to the
    serving port, so Asok's ``window.asokWS`` connects to this same port.
    """
    open_files_limit()
    hubs = [ws] if ws is not None else WebSocketServer.instances() or [WebSocketServer(app=app)]
    kwargs.setdefault("handler_class", AppHandler)
    server = GreenServer(listener if listener is not None else (host, port), app, hubs, **kwargs)
    server.init_socket()
    port = server.server_port
    config = getattr(app, "config", None)
    if isinstance(config, dict) or hasattr(config, "__setitem__"):
        config["WS_PORT"] = port
    for hub in hubs:
        hub.attach(app, port)
    server.application = metrics.wrap_app(app, hubs)
    server.start()
    return server


def serve(
    app: Any,
    ws: WebSocketServer | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_hangup: Callable[[GreenServer], None] | None = None,
    on_serving: Callable[[GreenServer], None] | None = None,
    **kwargs: Any,
) -> None:
    """Serve ``app`` and its WebSockets on ``host:port`` until SIGINT or SIGTERM.

    The process must have been monkey-patched by gevent first
    (``python -m asok_green serve`` and ``asok serve --gevent`` do it for you).
    With ``ssl_context=`` (or gevent's ``certfile=``/``keyfile=``) the port
    serves https and wss. ``on_hangup(server)`` runs in a greenlet of its own
    on each SIGHUP (``asok serve --gevent`` restarts there); ``on_serving(server)``
    once the server listens, before the process that started this one hears that it serves.
    """
    server = make_server(app, ws, host, port, **kwargs)
    url = f"{'https' if server.ssl_enabled else 'http'}://{host}:{server.server_port}"
    if jsonlog.json_requested(getattr(app, "config", None)):
        logger.info("serving %s (HTTP and WebSocket on the same port)", url, extra={"event": "serving", "url": url})
    else:
        print(f"asok_green: serving {url} (HTTP and WebSocket on the same port)", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.spawn, server.shutdown)
    if on_hangup is not None:
        gevent.signal_handler(signal.SIGHUP, gevent.spawn, on_hangup, server)
    if on_serving is not None:
        on_serving(server)
    tell_parent_ready()  # only now: the parent may send SIGHUP as soon as it hears this
    server.stopped.wait()
    logger.info("stopped", extra={"event": "stopped"})
    sys.stdout.flush()
