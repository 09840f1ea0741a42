"""History kept in this process' memory: fast, and gone (new epochs) after a restart.

Its messages count toward the history's one budget of memory
(``WS_HISTORY_MEMORY``, asok_green.history.tails): past it, the least recently
published streams lose what they held, and a stream nobody here uses any more
is forgotten whole once it holds nothing (or loses what it held).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import time
from typing import Any

from .store import Replay, new_epoch
from .tails import TailBudget

#: Bytes a stream held in memory counts toward the budget besides its messages' payloads.
STREAM_OVERHEAD = 256


class _MemoryStream:
    """One stream held in memory: its epoch, last offset and kept messages ``(offset, opcode, data, at)``."""

    __slots__ = ("name", "store", "epoch", "last", "ttl", "messages", "bytes", "released")

    def __init__(self, name: str, store: MemoryStore, size: int, ttl: float | None):
        self.name = name
        self.store = store
        self.epoch = new_epoch()
        self.last = 0
        self.ttl = ttl
        self.messages: deque = deque(maxlen=size)
        #: Payload bytes of the messages held, as the budget counts them.
        self.bytes = 0
        #: No connection of this process uses the stream: forgotten once it holds nothing.
        self.released = False

    def append(self, offset: int, opcode: int, data: bytes, at: float) -> None:
        """Keep one more message (the oldest goes if full), counted in the budget."""
        messages = self.messages
        size = len(data) + (STREAM_OVERHEAD if not messages else 0)
        if len(messages) == messages.maxlen:
            size -= len(messages.popleft()[2])
        messages.append((offset, opcode, data, at))
        self.bytes += size
        self.store.budget.added(self, size)

    def expire(self, now: float) -> None:
        """Forget the messages older than the ttl."""
        if self.ttl is None:
            return
        cutoff = now - self.ttl
        messages = self.messages
        while messages and messages[0][3] < cutoff:
            self.bytes -= len(messages.popleft()[2])
        if not messages:
            self.forget_tail()

    def forget_tail(self) -> None:
        """Let go of every message held (the budget is over, or they expired)."""
        self.messages.clear()
        size, self.bytes = self.bytes, 0
        self.store.budget.removed(self, size)
        if self.released:
            self.store.forget(self)

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
        self.budget = TailBudget()

    def share_budget(self, budget: TailBudget) -> None:
        """Count the messages held toward ``budget`` (the history's, shared with the streams' tails)."""
        self.budget = budget

    def _stream(self, name: str) -> _MemoryStream:
        stream = self._streams.get(name)
        if stream is None:
            size, ttl = self._policies.get(name, (self._default_size, None))
            stream = self._streams[name] = _MemoryStream(name, self, size, ttl)
        stream.released = False
        return stream

    def forget(self, stream: _MemoryStream) -> None:
        """Drop ``stream`` whole (its epoch too): nobody here uses it and it holds nothing."""
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]

    def start(self, hub: Any) -> None:
        """Nothing to start."""

    def publish(self, stream: str, opcode: int, data: bytes, deliver: Callable[[str, int], None]) -> None:
        """Append the message and deliver it at once."""
        held = self._stream(stream)
        held.last += 1
        now = time()
        held.append(held.last, opcode, data, now)
        held.expire(now)
        deliver(held.epoch, held.last)

    def read_since(self, stream: str, epoch: str, offset: int) -> Replay | None:
        """The messages after ``offset``, if every one of them is still held."""
        held = self._stream(stream)
        held.expire(time())
        if epoch != held.epoch or offset > held.last or offset + 1 < held.first_kept():
            return None
        return held.epoch, held.last, [(o, op, data) for o, op, data, _ in held.messages if o > offset]

    def read_held(self, stream: str, epoch: str) -> Replay | None:
        """Every message of ``epoch`` still held (None when the stream is in another epoch)."""
        held = self._stream(stream)
        held.expire(time())
        if epoch != held.epoch:
            return None
        return held.epoch, held.last, [(o, op, data) for o, op, data, _ in held.messages]

    def position(self, stream: str) -> tuple[str, int]:
        """The epoch and last offset."""
        held = self._stream(stream)
        return held.epoch, held.last

    def configure(self, stream: str, size: int, ttl: float | None) -> None:
        """Set the stream's limits (a stream already held keeps what still fits)."""
        self._policies[stream] = (size, ttl)
        held = self._streams.get(stream)
        if held is not None:
            held.released = False
        if held is not None and (held.messages.maxlen != size or held.ttl != ttl):
            kept = list(held.messages)[-size:]
            held.forget_tail()
            held.messages = deque(maxlen=size)
            for offset, opcode, data, at in kept:
                held.append(offset, opcode, data, at)
            held.ttl = ttl

    def release(self, stream: str) -> None:
        """No connection here uses ``stream``: its policy goes, and the stream too once it holds nothing."""
        self._policies.pop(stream, None)
        held = self._streams.get(stream)
        if held is None:
            return
        held.released = True
        if not held.messages:
            self.forget(held)

    def table_size(self) -> int:
        """How many entries (streams, policies) the store holds."""
        return len(self._streams) + len(self._policies)

    def stop(self) -> None:
        """Nothing to release."""
