"""Asok's answers to what the lower layers ask of the framework behind the app.

The port (asok_green.core.framework), and ``conn.request``: a connection
builds it with ``Connection.request_factory``, Asok's from here on
(asok_green.bridge.handshake_request).
"""

from __future__ import annotations

from typing import Any

from ..core import framework
from ..server.connection import Connection
from . import asok_api
from .handshake_request import handshake_request

__all__ = ["AsokFramework", "install"]


class AsokFramework(framework.Framework):
    """Asok behind the app: its apps, its metrics gauge, its adapters, its database connections."""

    def owns(self, app: Any) -> bool:
        """True for an Asok app."""
        return asok_api.is_asok_app(app)

    def count_open_sockets(self, count: int) -> None:
        """Set Asok's ``asok_websocket_active_connections`` gauge."""
        asok_api.set_open_sockets_gauge(count)

    def adapter_cannot_publish(self, adapter: Any) -> bool:
        """True when ``adapter`` keeps ``BaseWebSocketAdapter.publish``, which only raises NotImplementedError."""
        return asok_api.adapter_cannot_publish(adapter)

    def adapter_publishes_nothing(self, adapter: Any) -> bool:
        """True for Asok's ``InMemoryWebSocketAdapter``."""
        return asok_api.adapter_publishes_nothing(adapter)

    def release_thread_connections(self) -> None:
        """Close the connections Asok's ORM keeps for the calling thread (none if the ORM is not loaded)."""
        asok_api.close_thread_db_connections()


def install() -> None:
    """Make Asok the framework the lower layers ask, and ``conn.request`` Asok's; again changes nothing."""
    if not isinstance(framework.current(), AsokFramework):
        framework.install(AsokFramework())
        Connection.request_factory = staticmethod(handshake_request)
