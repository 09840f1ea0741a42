"""Where the history of streams is kept: the store interface, and what every store shares.

A store assigns each message of a stream its offset within the stream's
epoch, keeps the last ``size`` messages (and none older than ``ttl`` seconds),
and reads back what a reconnecting client missed. The hub's history
(asok_green.history.streams) is its only caller, always on the event loop.

The stores themselves live beside this module and import it, never the
reverse: ``memory`` (asok_green.history.memory_store), ``sqlite``
(asok_green.history.sqlite_store), ``redis`` (asok_green.history.redis_store).
asok_green.history.stores knows them all by name (``WS_HISTORY_STORE``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
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


class LeasingStore(HistoryStore, Protocol):
    """What a store may add (the hub's history uses each method when the store has it)."""

    def release(self, stream: str) -> None:
        """No connection of this process uses ``stream`` now: forget what is kept in memory about it.

        Its history stays where the store keeps it; the next client of the
        stream here makes the history call :meth:`configure` again.
        """

    def read_held(self, stream: str, epoch: str) -> Replay | None:
        """``(epoch, last offset, every message still held)``, or None when ``stream`` is in another epoch.

        For a partial replay: what a client whose gap the history no longer
        covers is given after ``continuity_lost``. May yield.
        """

    def table_size(self) -> int:
        """How many per-stream entries the store keeps in this process' memory."""
