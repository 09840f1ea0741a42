"""GreenServer: a ``gevent.pywsgi.WSGIServer`` serving pages and WebSockets on one listener.

It uses :class:`~asok_green.server.handler.GreenHandler` (or the subclass given
as ``handler_class``), lets upgraded connections keep their sockets after the
handler's greenlet ends, counts the requests in flight for a drain, and stops
gracefully: every WebSocket closed with 1001, waited for within a bound.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import gevent
from gevent.event import Event
from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from ..core.limits import Limits
from . import trim
from .handler import AccessLog, GreenHandler
from .hub import Hub
from .upgrade import DEFAULT_LIMITS

__all__ = ["GreenServer"]

logger = logging.getLogger("asok_green")


class GreenServer(WSGIServer):
    """``gevent.pywsgi.WSGIServer`` serving ``application`` and ``hubs`` on one listener."""

    handler_class = GreenHandler
    #: Upgraded connections outlive their handler's greenlet; :meth:`shutdown` waits for them.
    watches_connections = True
    #: True once a restart's successor serves and this server winds down (``asok_green.process.drain``).
    draining = False
    #: Accepted connections whose handler still runs (HTTP requests, and handshakes not yet upgraded).
    requests_in_flight = 0
    #: True once :meth:`shutdown` has begun (SIGTERM, SIGINT): a drain under way gives way to it.
    shutting_down = False
    #: True while this server starts its successor and hands over to it (``asok_green.process.handoff``).
    restarting = False

    def __init__(self, listener: Any, application: Any, hubs: Iterable[Hub], **kwargs: Any):
        """Listen on ``listener`` (an address or a socket); nothing is accepted before ``start``."""
        kwargs.setdefault("log", AccessLog(logging.INFO))
        kwargs.setdefault("error_log", LoggingLogAdapter(logging.getLogger("asok_green.error"), logging.ERROR))
        super().__init__(listener, application, **kwargs)
        self.hubs = list(hubs)
        self.stopped = Event()
        self._kept_open: dict[int, Any] = {}
        self._trimmer: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start accepting, and hand memory back to the system after each storm of sockets (:mod:`.trim`)."""
        super().start()
        if self._trimmer is None:
            self._trimmer = gevent.spawn(trim.run, self.sockets_held)

    def close(self) -> None:
        """Stop accepting (and stop watching for storms)."""
        trimmer, self._trimmer = self._trimmer, None
        if trimmer is not None:
            trimmer.kill(block=False)
        super().close()

    def sockets_held(self) -> int:
        """Client sockets held now: requests in flight (handshakes included) and WebSockets."""
        return self.requests_in_flight + self.connection_count()

    def keep_open(self, sock: Any) -> None:
        """Leave ``sock`` open when its handler's greenlet ends: a connection owns it now."""
        self._kept_open[id(sock)] = sock

    def do_handle(self, *args: Any) -> None:
        """Hand an accepted socket to its handler's greenlet, counted from now until :meth:`do_close`.

        Counted at accept, not when the greenlet first runs: a draining server
        must not take a connection accepted but not yet started for none.
        """
        self.requests_in_flight += 1
        super().do_handle(*args)

    def do_close(self, sock: Any, *args: Any) -> None:
        """Close a handled client socket, unless a connection took it over (:meth:`keep_open`)."""
        self.requests_in_flight -= 1
        if self._kept_open.pop(id(sock), None) is sock:
            return
        super().do_close(sock, *args)

    @property
    def limits(self) -> Limits:
        """The limits of the first hub: handshake time and header size apply per listener."""
        return self.hubs[0].limits if self.hubs else DEFAULT_LIMITS

    def connection_count(self) -> int:
        """WebSockets open across every hub."""
        return sum(hub.connection_count for hub in self.hubs)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, close every WebSocket with 1001, wait for them (bounded), then stop."""
        if self.stopped.is_set() or self.shutting_down:
            return
        self.shutting_down = True
        if timeout is None:
            timeout = max(hub.limits.shutdown_timeout for hub in self.hubs) if self.hubs else 1.0
        logger.info(
            "shutting down: closing %d WebSocket(s) with 1001",
            self.connection_count(),
            extra={"event": "shutting_down", "connections": self.connection_count()},
        )
        self.close()
        for hub in self.hubs:
            hub.stop()
        with gevent.Timeout(timeout, False):
            while self.connection_count():
                gevent.sleep(0.02)
        left = self.connection_count()
        if left:
            logger.warning("shutdown: dropping %d WebSocket(s) that did not close in %.1fs", left, timeout)
        self.stopped.set()
