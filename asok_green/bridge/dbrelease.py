"""Releasing the database connections Asok opened in the current greenlet, cheaply when there are none.

Asok keeps one database connection per thread (a greenlet under gevent) in each
engine's ``_local`` and closes them all at the end of an HTTP request
(``asok.orm.close_all_db_connections``). A WebSocket handler runs many times in
a long-lived greenlet, so the server releases them after every handler call;
most handlers touch no database, and for them this is one look per engine.
"""

from __future__ import annotations

from typing import Any

__all__ = ["holds_connection", "release_db_connections"]


def holds_connection(engine: Any) -> bool:
    """True if ``engine`` may hold a connection opened in the current greenlet.

    An engine without Asok's ``_local`` is always released, as Asok would.
    """
    local = getattr(engine, "_local", None)
    try:
        held = local.__dict__  # this greenlet's (or thread's) attributes: no exception when one is missing
    except AttributeError:
        return True
    return held.get("conn") is not None or bool(held.get("_all_conns"))


def release_db_connections(engines: dict | None = None) -> None:
    """Close the current greenlet's connections of every engine that holds one; never raises.

    ``engines`` defaults to Asok's engine cache (every engine the app opened).
    """
    if engines is None:
        try:
            from asok.orm.engines import _ENGINES_CACHE as engines
        except Exception:
            return
    for engine in tuple(engines.values()):
        if holds_connection(engine):
            try:
                engine.close_connections()
            except Exception:
                pass
