"""Where the history of streams is kept: the store interface, the in-memory store, and the store registry.

A store assigns each message of a stream its offset within the stream's
epoch, keeps the last ``size`` messages (and none older than ``ttl`` seconds),
and reads back what a reconnecting client missed. The hub's history
(asok_green.history.streams) is its only caller, always on the event loop.

* ``memory``: this process only; a restart starts every stream in a new epoch.
* ``sqlite`` (asok_green.history.sqlite_store): a file that survives restarts and
  that several processes of one machine may share.
* ``redis`` (asok_green.history.redis_store): Redis Streams in the cluster's Redis, offsets
  shared by every node (the default when the server is in a Redis cluster).
* other stores register themselves with :func:`register_store`.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from time import time
from typing import Any, Protocol

#: ``(offset, opcode, data)`` of one stored message.
Entry = tuple[int, int, bytes]

#: What ``read_since`` answers: the epoch, the last offset, and the messages after the asked offset.
Replay = tuple[str, int, list[Entry]]


class HistoryUnavailable(RuntimeError):
    """The store cannot answer now (its server is unreachable): the client should try again later."""


def new_epoch() -> str:
    """A fresh epoch: a few random url-safe characters."""
    return secrets.token_urlsafe(6)


class HistoryStore(Protocol):
    """What the hub's history asks of a store (every call on the event loop)."""

    def start(self, hub: Any) -> None:
        """Get ready to serve ``hub``; may spawn greenlets."""

    def publish(self, stream: str, opcode: int, data: bytes, deliver: Callable[[str, int], None]) -> None:
        """Append one message (opcode 1 text, 2 binary).

        Calls ``deliver(epoch, offset)`` on the event loop once the message has
        its offset, in offset order per stream. Never yields (a store that does
        I/O queues it).
        """

    def read_since(self, stream: str, epoch: str, offset: int) -> Replay | None:
        """``(epoch, last offset, [(offset, opcode, data), ...] after offset)``.

        None when the history no longer reaches back that far or ``epoch`` is
        not the stream's epoch. May yield.
        """

    def position(self, stream: str) -> tuple[str, int]:
        """The stream's current epoch and last offset (0 when empty); may yield."""

    def configure(self, stream: str, size: int, ttl: float | None) -> None:
        """Keep at most ``size`` messages of ``stream``, none older than ``ttl`` seconds (None: no age limit)."""

    def stop(self) -> None:
        """Release what the store holds."""


class _MemoryStream:
    """One stream held in memory: its epoch, last offset and kept messages ``(offset, opcode, data, at)``."""

    __slots__ = ("epoch", "last", "ttl", "messages")

    def __init__(self, size: int, ttl: float | None):
        self.epoch = new_epoch()
        self.last = 0
        self.ttl = ttl
        self.messages: deque = deque(maxlen=size)

    def expire(self, now: float) -> None:
        """Forget the messages older than the ttl."""
        if self.ttl is None:
            return
        cutoff = now - self.ttl
        messages = self.messages
        while messages and messages[0][3] < cutoff:
            messages.popleft()

    def first_kept(self) -> int:
        """The oldest offset still held (``last + 1`` when none is)."""
        return self.messages[0][0] if self.messages else self.last + 1


class MemoryStore:
    """History kept in this process' memory: fast, and gone (new epochs) after a restart."""

    #: The hub still passes broadcasts of history streams to its node: this store reaches no other process.
    distributes = False

    def __init__(self, default_size: int = 200) -> None:
        """An empty store; streams never configured keep ``default_size`` messages."""
        self._streams: dict[str, _MemoryStream] = {}
        self._policies: dict[str, tuple[int, float | None]] = {}
        self._default_size = default_size

    def _stream(self, name: str) -> _MemoryStream:
        stream = self._streams.get(name)
        if stream is None:
            size, ttl = self._policies.get(name, (self._default_size, None))
            stream = self._streams[name] = _MemoryStream(size, ttl)
        return stream

    def start(self, hub: Any) -> None:
        """Nothing to start."""

    def publish(self, stream: str, opcode: int, data: bytes, deliver: Callable[[str, int], None]) -> None:
        """Append the message and deliver it at once."""
        held = self._stream(stream)
        held.last += 1
        now = time()
        held.messages.append((held.last, opcode, data, now))
        held.expire(now)
        deliver(held.epoch, held.last)

    def read_since(self, stream: str, epoch: str, offset: int) -> Replay | None:
        """The messages after ``offset``, if every one of them is still held."""
        held = self._stream(stream)
        held.expire(time())
        if epoch != held.epoch or offset > held.last or offset + 1 < held.first_kept():
            return None
        return held.epoch, held.last, [(o, op, data) for o, op, data, _ in held.messages if o > offset]

    def position(self, stream: str) -> tuple[str, int]:
        """The epoch and last offset."""
        held = self._stream(stream)
        return held.epoch, held.last

    def configure(self, stream: str, size: int, ttl: float | None) -> None:
        """Set the stream's limits (a stream already held keeps what still fits)."""
        self._policies[stream] = (size, ttl)
        held = self._streams.get(stream)
        if held is not None:
            held.messages = deque(held.messages, maxlen=size)
            held.ttl = ttl

    def stop(self) -> None:
        """Nothing to release."""


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
    from .sqlite_follow import FollowedSqliteStore
    from .sqlite_store import default_path

    return FollowedSqliteStore(settings.get("WS_HISTORY_PATH") or default_path())


def _redis_store(settings: Any) -> HistoryStore:
    from .redis_store import RedisHistoryStore, queue_limit

    return RedisHistoryStore(queue_limit(settings))


register_store("memory", lambda settings: MemoryStore())
register_store("sqlite", _sqlite_store)
register_store("redis", _redis_store)
