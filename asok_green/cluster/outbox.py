"""The broadcasts a cluster node still has to publish, and the envelopes they travel in.

The hub delivers a broadcast to its own clients first, then hands it to its node,
which only queues it here (never yields). The node's publisher greenlet takes
batches from the queue into a Redis pipeline, as Asok's ``RedisWebSocketAdapter``
envelopes them: ``{"target", "name", "msg", "node_id"}`` on
``<prefix>:path:<path>`` and ``<prefix>:room:<room>``. A signal to a room (typing,
a receipt) travels as a room broadcast with ``"signal": true`` added: Asok's nodes
deliver it as one, and asok_green's deliver it live only, never into a history.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from ..protocol.frames import OP_TEXT

if TYPE_CHECKING:
    from ..protocol.outgoing import Outgoing

#: Broadcasts queued at most; past it they are dropped (and counted by the node).
MAX_OUTBOX = 10_000
#: Broadcasts one pipeline carries at most.
BATCH = 500


def channel_target(target: str) -> str:
    """The envelope's and the channel's target of a broadcast: a signal goes as a room broadcast."""
    return "room" if target == "signal" else target


def message_envelope(target: str, name: str, message: Outgoing, node_id: str) -> str:
    """The JSON envelope of a broadcast: text as it is, a binary message as base64, flagged as such."""
    envelope: dict = {"target": channel_target(target), "name": name, "node_id": node_id}
    if message.opcode == OP_TEXT:
        envelope["msg"] = message.payload.decode("utf-8")
    else:
        # Asok's envelope carries text: a binary message travels as base64, flagged as such.
        envelope["msg"] = base64.b64encode(message.payload).decode("ascii")
        envelope["binary"] = True
    if target == "signal":
        envelope["signal"] = True
    return json.dumps(envelope, default=str)


class Outbox:
    """Broadcasts already delivered here, waiting to be published for the other nodes, oldest first."""

    def __init__(self, prefix: str, node_id: str, limit: int = MAX_OUTBOX) -> None:
        """An empty queue of at most ``limit`` broadcasts, published under ``prefix`` as ``node_id``."""
        self.prefix = prefix
        self.node_id = node_id
        self.limit = limit
        self._queue: deque = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, target: str, name: str, message: Outgoing) -> bool:
        """Queue a broadcast (``target``: as :meth:`Node.publish`); False, and nothing queued, when full."""
        if len(self._queue) >= self.limit:
            return False
        self._queue.append((target, name, message))
        return True

    def write_batch(self, pipe: Any, most: int = BATCH) -> int:
        """Add the oldest ``most`` broadcasts to ``pipe`` (they are taken); returns how many."""
        queue = self._queue
        count = min(len(queue), most)
        for _ in range(count):
            target, name, message = queue.popleft()
            channel = f"{self.prefix}:{channel_target(target)}:{name}"
            pipe.publish(channel, message_envelope(target, name, message, self.node_id))
        return count
