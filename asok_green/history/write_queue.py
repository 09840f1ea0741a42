"""What a node still has to write to the Redis history, and what it wrote but has not delivered yet.

Pure bookkeeping (no I/O, never yields): the Redis store's writer takes batches
from the :class:`WriteQueue`, the subscriber reports echoes, and the queue says
which messages to deliver when, in the order Redis gave the offsets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Messages a node keeps waiting for Redis before it drops the oldest (``WS_HISTORY_QUEUE``).
DEFAULT_QUEUE = 10_000
#: How many messages, and about how many bytes, one script call writes at most.
BATCH_MESSAGES = 200
BATCH_BYTES = 1 << 20

DeliverCallback = Callable[[str, int], None]


@dataclass(eq=False)
class PendingMessage:
    """A message of this node on its way to Redis, then to this node's v1 clients."""

    seq: int
    stream: str
    opcode: int
    data: bytes
    deliver: DeliverCallback
    #: Start a new epoch before this message (an older one of its stream was dropped).
    renew: bool = False
    epoch: str | None = None
    offset: int = 0
    #: The subscription generation when it was sent (its echo comes on that subscription).
    generation: int = 0


class WriteQueue:
    """What this node has still to write to Redis, and what it wrote but has not delivered yet.

    Pure bookkeeping (no I/O, never yields): the store's writer takes batches from
    it, the subscriber reports echoes, and it says which messages to deliver when.
    """

    def __init__(self, limit: int = DEFAULT_QUEUE):
        """Hold at most ``limit`` messages waiting for Redis."""
        self.limit = max(1, limit)
        self.waiting: deque[PendingMessage] = deque()
        #: The batch on the wire: sent again, as it is, until Redis answers.
        self.sending: list[PendingMessage] = []
        #: Sent (or being sent) and not delivered yet, by seq, oldest first.
        self.unechoed: dict[int, PendingMessage] = {}
        #: Streams that lost a message: their next write starts a new epoch.
        self.renew: set[str] = set()
        #: Messages dropped so far (queue full, or refused by Redis).
        self.dropped = 0
        #: Bumped each time the subscription is made again (echoes on the old one are lost).
        self.generation = 0
        self._seq = 0

    def __len__(self) -> int:
        return len(self.waiting) + len(self.sending)

    def add(self, stream: str, opcode: int, data: bytes, deliver: DeliverCallback) -> PendingMessage | None:
        """Queue a message; returns the oldest waiting one if it was dropped to make room."""
        self._seq += 1
        dropped = None
        if len(self.waiting) >= self.limit:
            dropped = self.waiting.popleft()
            self.renew.add(dropped.stream)
            self.dropped += 1
        self.waiting.append(PendingMessage(self._seq, stream, opcode, data, deliver))
        return dropped

    def next_batch(self, most: int = BATCH_MESSAGES, max_bytes: int = BATCH_BYTES) -> list[PendingMessage]:
        """The batch to send now: the one on the wire again, or the oldest waiting ones."""
        if self.sending:
            return self.sending
        batch: list[PendingMessage] = []
        size = 0
        waiting = self.waiting
        while waiting and len(batch) < most and size < max_bytes:
            message = waiting.popleft()
            if message.stream in self.renew:
                message.renew = True
                self.renew.discard(message.stream)
            message.generation = self.generation
            self.unechoed[message.seq] = message
            batch.append(message)
            size += len(message.data)
        self.sending = batch
        return batch

    def written(self, results: Sequence[tuple[str, int]]) -> list[PendingMessage]:
        """Redis wrote the batch on the wire with these (epoch, offset): those to deliver now.

        A message sent on a subscription since replaced will get no echo: it is
        delivered now (unless its echo made it first). The others wait for theirs,
        which keeps every node's delivery in Redis' order.
        """
        batch, self.sending = self.sending, []
        due = []
        for message, (epoch, offset) in zip(batch, results):
            message.epoch, message.offset = epoch, offset
            if message.generation != self.generation and self.unechoed.pop(message.seq, None) is not None:
                due.append(message)
        return due

    def refused(self) -> list[PendingMessage]:
        """Redis refuses the batch on the wire for good: it is dropped and its streams start a new epoch."""
        batch, self.sending = self.sending, []
        for message in batch:
            self.unechoed.pop(message.seq, None)
            self.renew.add(message.stream)
        self.dropped += len(batch)
        return batch

    def echoed(self, seq: int, epoch: str, offset: int) -> PendingMessage | None:
        """Redis published this node's message ``seq``: it, to deliver now (None if it already was)."""
        message = self.unechoed.pop(seq, None)
        if message is not None:
            message.epoch, message.offset = epoch, offset
        return message

    def resubscribed(self) -> list[PendingMessage]:
        """The subscription was made again: the written messages whose echo is lost, to deliver now, in order."""
        self.generation += 1
        due = [m for m in self.unechoed.values() if m.epoch is not None]
        for message in due:
            del self.unechoed[message.seq]
        return due
