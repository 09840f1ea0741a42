"""The history stores by name: what ``WS_HISTORY_STORE`` chooses from.

* ``memory`` (asok_green.history.memory_store): this process only; a restart
  starts every stream in a new epoch.
* ``sqlite`` (asok_green.history.sqlite_store): a file that survives restarts
  and that several processes of one machine may share.
* ``redis`` (asok_green.history.redis_store): Redis Streams in the cluster's
  Redis, offsets shared by every node (the default when the server is in a
  Redis cluster).
* other stores register themselves with :func:`register_store`.

The one module that imports every concrete store; they import only the
interface (asok_green.history.store).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .memory_store import MemoryStore
from .redis_store import RedisHistoryStore, queue_limit
from .sqlite_follow import FollowedSqliteStore
from .sqlite_store import default_path
from .store import HistoryStore

#: Store name -> ``factory(settings)`` building it; ``settings`` is a mapping of WS_* settings.
_STORES: dict[str, Callable[[Any], HistoryStore]] = {}


def register_store(name: str, factory: Callable[[Any], HistoryStore]) -> None:
    """Make ``WS_HISTORY_STORE = name`` build its store with ``factory(settings)``."""
    _STORES[name] = factory


def store_names() -> list[str]:
    """The names ``WS_HISTORY_STORE`` accepts."""
    return sorted(_STORES)


def make_store(name: str, settings: Any) -> HistoryStore:
    """The store registered as ``name``; ValueError for a name nobody registered."""
    factory = _STORES.get(name)
    if factory is None:
        raise ValueError(f"WS_HISTORY_STORE={name!r}: not one of {', '.join(store_names())}")
    return factory(settings)


def _sqlite_store(settings: Any) -> HistoryStore:
    return FollowedSqliteStore(settings.get("WS_HISTORY_PATH") or default_path())


def _redis_store(settings: Any) -> HistoryStore:
    return RedisHistoryStore(queue_limit(settings))


register_store("memory", lambda settings: MemoryStore())
register_store("sqlite", _sqlite_store)
register_store("redis", _redis_store)
