"""Releasing the database connections Asok opened in the current greenlet, cheaply when there are none.

Asok keeps one database connection per thread (a greenlet under gevent) in each
engine and closes them all at the end of an HTTP request. A WebSocket handler
runs many times in a long-lived greenlet, so the server releases them after
every handler call; most handlers touch no database, and for them this is one
look per engine (:func:`asok_green.bridge.asok_api.holds_connection`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from . import asok_api
from .asok_api import holds_connection

__all__ = ["db_releaser", "holds_connection", "release_db_connections"]


def release_db_connections(engines: Mapping[str, Any] | None = None) -> None:
    """Close the current greenlet's connections of every engine that holds one; never raises.

    ``engines`` defaults to every engine the app opened.
    """
    if engines is None:
        engines = asok_api.engine_cache()
        if engines is None:
            return
    for engine in tuple(engines.values()):
        if holds_connection(engine):
            try:
                asok_api.close_connections(engine)
            except Exception:
                pass


def db_releaser() -> Callable[[], None]:
    """What releases Asok's database connections after a handler: a look per engine, a close only if one is open."""
    engines = asok_api.engine_cache()
    if engines is None:  # an Asok that keeps its engines elsewhere: its own function, as it does per request
        return asok_api.close_all_db_connections
    return functools.partial(release_db_connections, engines)
