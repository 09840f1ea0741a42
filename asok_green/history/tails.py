"""What a stream with history holds in this process' memory: its policy, its position, its tail, and their budget.

Every in-memory tail (a stream's last messages kept to answer replays without
asking the store, and the messages of the ``memory`` store itself) counts
toward one :class:`TailBudget` of bytes (``WS_HISTORY_MEMORY``). Past it, the
least recently added to are emptied first: their replays are read from the
store, or, for the ``memory`` store, are out of reach (``continuity_lost``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..protocol import envelopes

if TYPE_CHECKING:
    from ..protocol.outgoing import Outgoing
    from ..server.connection import Connection

#: Most messages of one stream held in memory to answer replays without asking the store.
TAIL_LIMIT = 500

#: Bytes every tail holds together when ``WS_HISTORY_MEMORY`` is not set.
DEFAULT_BUDGET = 16 * 1024 * 1024


class Policy(NamedTuple):
    """How much history a stream keeps: ``size`` messages, none older than ``ttl`` seconds (None: no limit)."""

    size: int
    ttl: float | None


def check_policy(size: Any, ttl: Any) -> Policy:
    """The policy for ``size`` and ``ttl``; ValueError when they are not a positive count and duration."""
    if type(size) is not int or size <= 0:
        raise ValueError(f"history size must be a positive int, got {size!r}")
    if ttl is not None and (not isinstance(ttl, (int, float)) or ttl <= 0):
        raise ValueError(f"history ttl must be a positive number of seconds or None, got {ttl!r}")
    return Policy(size, None if ttl is None else float(ttl))


class TailHolder(Protocol):
    """Anything whose in-memory messages count toward a :class:`TailBudget`."""

    def forget_tail(self) -> None:
        """Empty the tail, telling the budget how many bytes it gave back."""


class TailBudget:
    """The bytes every in-memory tail holds, and whose tail to empty first when that is too much."""

    def __init__(self, limit: int = DEFAULT_BUDGET) -> None:
        """A budget of ``limit`` bytes, none used."""
        self.limit = limit
        self.used = 0
        #: Holders with a tail, the least recently added to first.
        self._recent: OrderedDict[Any, None] = OrderedDict()

    def added(self, holder: TailHolder, size: int) -> None:
        """``holder``'s tail grew by ``size`` bytes (less if it dropped its oldest): empty others' if over."""
        self.used += size
        recent = self._recent
        recent[holder] = None
        recent.move_to_end(holder)
        while self.used > self.limit and len(recent) > 1:
            oldest = next(iter(recent))
            if oldest is holder:
                break
            oldest.forget_tail()
            recent.pop(oldest, None)  # a holder that gave back nothing is not asked again

    def removed(self, holder: TailHolder, size: int) -> None:
        """``holder``'s tail was emptied of its ``size`` bytes."""
        self.used -= size
        self._recent.pop(holder, None)

    def __len__(self) -> int:
        """How many holders have a tail now."""
        return len(self._recent)


class Stream:
    """One stream with history as this process sees it: its epoch, the last offset delivered here, its tail.

    ``held`` maps each connection whose replay is being read to the stream's
    messages held for it meanwhile. ``backlog`` collects the messages that
    arrive while missing ones are read from the store.
    """

    __slots__ = ("name", "policy", "epoch", "last", "prefix", "tail", "budget", "held", "backlog")

    def __init__(self, name: str, policy: Policy, budget: TailBudget | None = None):
        """A stream not yet loaded (no epoch known); its tail counts toward ``budget``."""
        self.name = name
        self.policy = policy
        self.epoch: str | None = None
        self.last = 0
        self.prefix = b""
        #: ``(offset, at, Outgoing)`` of the last messages delivered here, offsets consecutive.
        self.tail: deque = deque(maxlen=min(policy.size, TAIL_LIMIT))
        self.budget = budget if budget is not None else TailBudget()
        self.held: dict[Connection, list[Outgoing]] | None = None
        self.backlog: list | None = None

    @property
    def busy(self) -> bool:
        """True while a replay or a fill of missing messages is under way."""
        return bool(self.held) or self.backlog is not None

    def enter_epoch(self, epoch: str, last: int) -> None:
        """From now on the stream is in ``epoch``, and ``last`` is its last offset delivered here."""
        self.epoch, self.last = epoch, last
        self.prefix = envelopes.stream_prefix(self.name, epoch)
        self.forget_tail()

    def unload(self) -> None:
        """Forget the epoch, last offset and tail: the next client of the stream here reads the store."""
        self.forget_tail()
        self.epoch, self.last, self.prefix = None, 0, b""

    def remember(self, offset: int, at: float, message: Outgoing) -> None:
        """Add message ``offset`` (delivered at ``at``) to the tail, dropping the oldest if it is full."""
        tail = self.tail
        if tail and offset != tail[-1][0] + 1:
            # Offsets in between were published by another process and not delivered here:
            # the tail holds consecutive offsets only, so it starts over.
            self.forget_tail()
        size = len(message.payload)
        if len(tail) == tail.maxlen:
            size -= len(tail.popleft()[2].payload)
        tail.append((offset, at, message))
        self.budget.added(self, size)

    def forget_tail(self) -> None:
        """Empty the tail (replays are then read from the store)."""
        tail = self.tail
        if tail:
            size = sum(len(message.payload) for _, _, message in tail)
            tail.clear()
            self.budget.removed(self, size)

    def tail_since(self, since: envelopes.Since, now: float) -> list[Outgoing] | None:
        """The messages after ``since`` if the tail holds every one of them, else None."""
        if since.epoch != self.epoch or since.offset > self.last:
            return None
        if since.offset == self.last:
            return []
        tail = self.tail
        if not tail or tail[0][0] > since.offset + 1:
            return None
        kept = list(islice(tail, since.offset + 1 - tail[0][0], None))
        ttl = self.policy.ttl
        if ttl is not None and kept[0][1] < now - ttl:
            return None
        return [message for _, _, message in kept]
