"""A gunicorn worker: ``gunicorn -k asok_green.worker.GeventWebSocketWorker wsgi:app``.

gunicorn's gevent worker patches the process, then loads ``wsgi.py``; this
subclass makes ``asok.WebSocketServer`` asok_green's class before that load, and
binds every WebSocketServer that ``wsgi.py`` created to the app and the port
afterwards, so the project's pages and WebSockets share gunicorn's port. Run
several workers (``-w N``) with ``WS_ADAPTER=redis`` and ``WS_REDIS_URL`` so a
broadcast reaches the clients of every worker.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from ..api.serving import AppHandler
from ..ops import metrics

logger = logging.getLogger("asok_green")


class WorkerHandler(AppHandler, PyWSGIHandler):
    """:class:`~asok_green.api.serving.AppHandler` with gunicorn's environ keys and access log."""

    def log_request(self) -> None:
        """Log finished HTTP requests in gunicorn's access log; upgrades are not requests that finish."""
        if self.code != 101:
            PyWSGIHandler.log_request(self)


class GeventWebSocketWorker(GeventPyWSGIWorker):
    """gunicorn's gevent pywsgi worker serving the app's pages and its asok_green WebSockets."""

    wsgi_handler = WorkerHandler

    def load_wsgi(self) -> None:
        """Install the drop-in, load the app, then attach every WebSocketServer to it and this port."""
        from ..api.websocket_server import WebSocketServer
        from ..bridge.bootstrap import install_dropin

        if self.cfg.preload_app:
            logger.error(
                "--preload imports wsgi.py before gevent patches the worker, so its WebSocketServer "
                "is not asok_green's: run this worker class without --preload"
            )
        install_dropin(WebSocketServer)
        super().load_wsgi()
        port = self._port()
        config = getattr(self.wsgi, "config", None)
        if port is not None and hasattr(config, "__setitem__"):
            config["WS_PORT"] = port
        hubs = WebSocketServer.instances()
        for hub in hubs:
            hub.attach(self.wsgi, port if port is not None else hub.port)
        self.wsgi = metrics.wrap_app(self.wsgi, hubs)
        if self.cfg.workers > 1 and any(hub.cluster is None for hub in hubs):
            logger.warning(
                "%d workers without WS_ADAPTER=redis: a broadcast reaches only the clients of the "
                "worker that sends it, and presence is per worker",
                self.cfg.workers,
            )

    def _port(self) -> int | None:
        for sock in self.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return sock.getsockname()[1]
        return None

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop accepting as gunicorn does, and close every WebSocket with 1001 now.

        Without this, open WebSockets would hold the worker for gunicorn's whole
        graceful timeout.
        """
        super().handle_exit(sig, frame)
        gevent.spawn(_stop_hubs)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGQUIT / SIGINT (quick exit): say goodbye to the clients and the cluster first."""
        gevent.spawn(_stop_hubs)
        super().handle_quit(sig, frame)


def _stop_hubs() -> None:
    from ..api.websocket_server import WebSocketServer

    for hub in WebSocketServer.instances():
        try:
            hub.stop()
        except Exception:
            logger.exception("error while stopping %r", hub)
