"""History kept in this process' memory: fast, and gone (new epochs) after a restart."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import time
from typing import Any

from .store import Replay, new_epoch


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
