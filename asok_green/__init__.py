"""asok_green: Asok's WebSocket API and its pages on one port, from one gevent process.

Importing the package imports nothing heavy, so ``python -m asok_green`` can
monkey-patch the process first; the public names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "WebSocketServer",
    "Connection",
    "serve",
    "make_server",
    "blocking",
    "publish",
    "publish_json",
    "__version__",
]

if TYPE_CHECKING:
    from .api.serving import make_server, serve
    from .publishing import publish, publish_json
    from .server.connection import Connection
    from .server.hub import WebSocketServer
    from .server.offload import blocking

_LAZY = {
    "WebSocketServer": "server.hub",
    "Connection": "server.connection",
    "serve": "api.serving",
    "make_server": "api.serving",
    "blocking": "server.offload",
    "publish": "publishing",
    "publish_json": "publishing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asok_green' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"asok_green.{module}"), name)
    globals()[name] = value
    return value
