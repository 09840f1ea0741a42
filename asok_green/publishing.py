"""``asok_green.publish(stream, message)``: a message into a stream's history, from any process.

An ``asok worker`` task, a cron job or a management command has no WebSocket
server of its own. ``publish`` appends the message to the stream's history with
the next offset, in the store the servers use, and the servers deliver it to
their clients, plain and ``asok-green.v1``, live; a resume client that was away
gets it replayed when it comes back.

* ``sqlite`` (the default, one machine): the message is appended to the shared
  file in a write transaction, as a server appends its own; each serving process
  follows the file (asok_green.history.sqlite_follow) and delivers it within a
  few tens of milliseconds.
* ``redis`` (``WS_HISTORY_STORE=redis``, or a cluster: ``WS_ADAPTER=redis`` /
  ``WS_REDIS_URL``): the servers' own Lua script gives the offset, appends the
  entry and publishes it on the history channel, where every node delivers it.

Streams are named as the servers name them: a path (``/chat/general``) or a
room (``room:general``). The stream must keep history in the app
(``@ws.on(..., history=N)`` or ``ws.keep_history(...)``) for its clients to
resume it; a publish trims nothing unless given ``size``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import Any, NamedTuple

__all__ = ["publish", "publish_json", "Publisher", "Published"]

#: Kept when a publish is not told a size: the script does not trim what the app keeps.
_NO_TRIM = 2**62
_OP_TEXT, _OP_BINARY = 1, 2
_REDIS_ATTEMPTS = 3


class Published(NamedTuple):
    """Where a published message landed: its stream's epoch and its offset."""

    epoch: str
    offset: int


def _check_stream(stream: str) -> str:
    if not isinstance(stream, str) or not (stream.startswith("/") or stream.startswith("room:")):
        raise ValueError(f"a stream is a path ('/chat/general') or a room ('room:general'), not {stream!r}")
    return stream


def _encode(message: str | bytes) -> tuple[int, bytes]:
    if isinstance(message, str):
        return _OP_TEXT, message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return _OP_BINARY, bytes(message)
    raise TypeError(f"publish takes str or bytes (publish_json for objects), not {type(message).__name__}")


def _setting(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def store_name(store: str | None = None) -> str:
    """The store to publish into: ``store``, else ``WS_HISTORY_STORE``, else ``redis`` in a cluster, else ``sqlite``."""
    name = store or _setting("WS_HISTORY_STORE")
    if name is None:
        clustered = (_setting("WS_ADAPTER") or "").lower() == "redis" or _setting("WS_REDIS_URL") is not None
        name = "redis" if clustered else "sqlite"
    name = name.lower()
    if name not in ("sqlite", "redis"):
        raise ValueError(f"publish writes to the sqlite or redis store, not {name!r} (a memory store is per process)")
    return name


class _SqliteTarget:
    def __init__(self, path: str | None) -> None:
        from .history.sqlite_store import SqliteStore, default_path

        self.store = SqliteStore(path or _setting("WS_HISTORY_PATH") or default_path())

    def append(self, stream: str, opcode: int, data: bytes, size: int) -> Published:
        landed: list[Published] = []
        self.store.configure(stream, size, None)
        self.store.publish(stream, opcode, data, lambda epoch, offset: landed.append(Published(epoch, offset)))
        return landed[0]

    def close(self) -> None:
        self.store.stop()


class _RedisTarget:
    def __init__(self, url: str | None, prefix: str | None) -> None:
        import redis

        from .cluster.redis_node import DEFAULT_PREFIX, DEFAULT_REDIS_URL
        from .history.redis_store import StreamLog

        self.errors = (redis.ConnectionError, redis.TimeoutError)
        self.client = redis.Redis.from_url(url or _setting("WS_REDIS_URL") or DEFAULT_REDIS_URL)
        prefix = prefix or DEFAULT_PREFIX
        # A node id of its own: the script's batches are acknowledged under it, and no server takes them for its own.
        node = f"publisher:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.log = StreamLog(self.client, prefix, node, f"{prefix}:history")
        self.batch = 0

    def append(self, stream: str, opcode: int, data: bytes, size: int) -> Published:
        from .history.redis_store import PendingMessage

        self.batch += 1
        message = PendingMessage(self.batch, stream, opcode, data, deliver=lambda epoch, offset: None)
        for attempt in range(_REDIS_ATTEMPTS):
            try:
                # The same batch id again after a lost reply: Redis answers the offset it gave, writes nothing twice.
                ((epoch, offset),) = self.log.append(self.batch, [message], lambda name: (size, None))
                return Published(epoch, offset)
            except self.errors:
                if attempt == _REDIS_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


class Publisher:
    """Publishes into one store; keeps its connection (a worker makes one and publishes many times).

    ``store``: ``sqlite`` or ``redis`` (default: :func:`store_name`). SQLite:
    ``path``, default ``WS_HISTORY_PATH`` or ``asok_green_history.sqlite3`` in
    the working directory (the project's, as the servers'). Redis: ``redis_url``
    (default ``WS_REDIS_URL``) and ``prefix`` (default ``asok:ws``). Thread-safe.
    """

    def __init__(
        self,
        store: str | None = None,
        *,
        path: str | None = None,
        redis_url: str | None = None,
        prefix: str | None = None,
    ) -> None:
        """Open the store (a Redis client connects on first use)."""
        self.store = store_name(store)
        self._target = _SqliteTarget(path) if self.store == "sqlite" else _RedisTarget(redis_url, prefix)
        self._lock = threading.Lock()

    def publish(self, stream: str, message: str | bytes, *, size: int | None = None) -> Published:
        """Append ``message`` to ``stream``; the servers deliver it to its clients. Where it landed.

        ``size``: trim the stream to its last ``size`` messages (default: trim nothing,
        the app's own broadcasts trim it to what it keeps).
        """
        opcode, data = _encode(message)
        with self._lock:
            return self._target.append(_check_stream(stream), opcode, data, size or _NO_TRIM)

    def publish_json(self, stream: str, obj: Any, *, size: int | None = None) -> Published:
        """Publish ``obj`` as JSON text."""
        return self.publish(stream, json.dumps(obj), size=size)

    def close(self) -> None:
        """Release the store's connection."""
        with self._lock:
            self._target.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_publishers: dict[tuple, Publisher] = {}
_publishers_lock = threading.Lock()


def _default_publisher(store: str | None, path: str | None, redis_url: str | None, prefix: str | None) -> Publisher:
    key = (store_name(store), path, redis_url, prefix, os.getpid())
    with _publishers_lock:
        publisher = _publishers.get(key)
        if publisher is None:
            publisher = _publishers[key] = Publisher(key[0], path=path, redis_url=redis_url, prefix=prefix)
        return publisher


def publish(
    stream: str,
    message: str | bytes,
    *,
    store: str | None = None,
    path: str | None = None,
    redis_url: str | None = None,
    prefix: str | None = None,
    size: int | None = None,
) -> Published:
    """Append ``message`` to ``stream``'s history; every server delivers it to the stream's clients.

    Works from any process of the machine (SQLite) or of the cluster (Redis):
    an ``asok worker`` task, a script, a cron job. Returns the epoch and offset
    it got. The store and its settings are those of :class:`Publisher`.
    """
    return _default_publisher(store, path, redis_url, prefix).publish(stream, message, size=size)


def publish_json(stream: str, obj: Any, **options: Any) -> Published:
    """:func:`publish` ``obj`` as JSON text."""
    return publish(stream, json.dumps(obj), **options)
