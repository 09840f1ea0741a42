"""History of streams in Redis Streams, shared by every node of a Redis cluster (asok_green.cluster.redis_node).

Offsets are global: Redis gives them, so a client resumes on any node. Per stream ``S``
(prefix ``asok:ws`` by default):

* ``<prefix>:history:S``: a Redis stream, one entry per message, id ``0-<offset>``, fields
  ``p`` (opcode), ``d`` (payload), ``t`` (Redis' clock, ms); trimmed with ``MAXLEN`` to the
  stream's size, and with ``MINID`` to its ttl;
* ``<prefix>:history-meta:S``: a hash, ``epoch`` and ``last`` (the last offset given). A stream
  whose hash is missing (new, or a Redis that lost its data) gets a new epoch.

Writing. :meth:`RedisHistoryStore.publish` only queues (the hub has already handed the message
to its plain clients; the queue is asok_green.history.write_queue). One writer greenlet sends
the queue in order, in batches; each batch is one Lua script (asok_green.history.redis_log)
that, per message, increments the stream's offset, appends the entry (``XADD``) and publishes
it (``PUBLISH``) with its stream, epoch and offset on ``<prefix>:history``. Every node's
cluster subscriber hands what it reads there to its store: another node's message goes to
``hub.deliver_stream`` (plain and v1 clients), this node's own to the ``deliver`` callback it
was published with (v1 clients). One channel read by one subscriber: every node delivers in the
order Redis gave the offsets. A batch whose reply was lost is sent again as it was; the script
remembers each node's last batch (``<prefix>:history-ack:<node>``, one hour) and answers a
repeat with the offsets it gave, so nothing is written twice.

Redis down. Plain clients of this node go on getting its broadcasts at once (the hub does
that). History writes wait in the queue, in order, up to ``WS_HISTORY_QUEUE`` messages
(default 10,000; an older message is dropped to make room for a newer one) and are written
when Redis is back. A stream that lost a message that way starts a new epoch at its next write.
What v1 clients see meanwhile: no stream messages (theirs wait for an offset) until Redis is
back, then the queued ones in order; after a drop, the first of them carries the new epoch
(the client says "continuity lost"); messages of other nodes written while this node was cut
off show as a gap in offsets, which the client fills by resuming. A client that connects or
resumes during the outage gets the position this node delivered last, and a resume from
exactly there succeeds; any other resume raises :class:`HistoryUnavailable` (the server
closes it with 1013, "try again later", and the client's next attempt resumes whole).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, NamedTuple

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from ..core.node import ClusterConfigError
from ..core.outage import Outage
from .redis_log import StreamLog
from .store import HistoryUnavailable
from .write_queue import DEFAULT_QUEUE, DeliverCallback, PendingMessage, WriteQueue

logger = logging.getLogger("asok_green.history")

#: Entries kept per stream when the app did not say (``configure``).
DEFAULT_SIZE = 200
#: A batch Redis refuses (an error reply, not an outage) this many times in a row is dropped.
REFUSALS_BEFORE_DROP = 3


class Published(NamedTuple):
    """A message as Redis published it on the history channel."""

    stream: str
    epoch: str
    offset: int
    opcode: int
    node: str
    seq: int
    data: bytes


def parse_published(raw: bytes) -> Published | None:
    """The message in a history channel payload (``[stream, epoch, offset, opcode, node, seq]\\n<data>``), or None."""
    header, sep, data = raw.partition(b"\n")
    if not sep:
        return None
    try:
        stream, epoch, offset, opcode, node, seq = json.loads(header)
    except (ValueError, TypeError):
        return None
    if not (isinstance(stream, str) and isinstance(epoch, str) and isinstance(offset, int)):
        return None
    return Published(stream, epoch, offset, int(opcode), str(node), int(seq), data)


# -- the store -------------------------------------------------------------------------------


def queue_limit(config: Any = None) -> int:
    """``WS_HISTORY_QUEUE`` from the app's config or the environment, else :data:`DEFAULT_QUEUE`."""
    raw = config.get("WS_HISTORY_QUEUE") if hasattr(config, "get") else None
    if raw in (None, ""):
        raw = os.environ.get("WS_HISTORY_QUEUE")
    try:
        return max(1, int(raw)) if raw not in (None, "") else DEFAULT_QUEUE
    except (TypeError, ValueError):
        raise ClusterConfigError(f"WS_HISTORY_QUEUE must be a number of messages, not {raw!r}") from None


class RedisHistoryStore:
    """A history store (asok_green.history.store) on Redis Streams, shared by the nodes of the hub's cluster.

    ``publish`` never yields: it queues. ``read_since`` and ``position`` make one
    Redis round trip (they yield); during an outage they answer from what this
    node delivered last, or raise :class:`HistoryUnavailable`.
    """

    #: This store carries each message to the other nodes itself (they deliver it from the
    #: history channel): the hub does not publish a stream's messages on the cluster too.
    distributes = True

    def __init__(self, limit: int = DEFAULT_QUEUE):
        """A store holding at most ``limit`` messages for Redis; it uses the hub's cluster from :meth:`start`."""
        self.queue = WriteQueue(limit)
        self.hub: Any = None
        self.cluster: Any = None
        self.log: StreamLog | None = None
        self._limits: dict[str, tuple[int, float | None]] = {}
        #: Streams no connection here uses, whose limits go once no message of theirs waits to be written.
        self._released: set[str] = set()
        #: Per stream, the (epoch, offset) of the last message this node delivered.
        self._delivered: dict[str, tuple[str, int]] = {}
        self._wake = Event()
        self._catching_up = Semaphore()
        self._writer: gevent.Greenlet | None = None
        self._stopped = False
        self._errors: tuple = ()
        self._refusal: type = Exception
        self._outage: Outage | None = None
        self._drop_logged = False
        self._refusals = 0

    # -- the HistoryStore interface --------------------------------------------------------

    def start(self, hub: Any) -> None:
        """Use ``hub``'s Redis cluster: listen on its history channel, start the writer greenlet.

        Raises :class:`asok_green.core.node.ClusterConfigError` when ``hub`` is not in a Redis cluster.
        """
        cluster = hub.cluster
        if cluster is None or not hasattr(cluster, "attach_history"):
            raise ClusterConfigError(
                "WS_HISTORY_STORE=redis keeps history in the cluster's Redis: set WS_ADAPTER=redis and "
                "WS_REDIS_URL (or serve with --workers N), or choose WS_HISTORY_STORE=sqlite"
            )
        from redis.exceptions import ResponseError

        self.hub = hub
        self.cluster = cluster
        self.log = StreamLog(cluster.redis, cluster.settings.prefix, cluster.node_id, cluster.history_channel)
        self._errors = cluster.redis_errors
        self._refusal = ResponseError
        self._outage = Outage(
            f"Redis history writes to {cluster.address}",
            logger,
            meanwhile=f"queueing them in order, up to {self.queue.limit} messages (WS_HISTORY_QUEUE)",
        )
        cluster.attach_history(self)
        self._writer = gevent.spawn(self._run_writer)
        self._wake.set()

    def configure(self, stream: str, size: int, ttl: float | None) -> None:
        """Keep the last ``size`` messages of ``stream``, none older than ``ttl`` seconds (None: any age)."""
        self._limits[stream] = (max(1, int(size)), ttl)
        self._released.discard(stream)

    def release(self, stream: str) -> None:
        """No connection here uses ``stream``: forget what this node keeps about it (Redis keeps its history)."""
        self._delivered.pop(stream, None)
        if len(self.queue):
            self._released.add(stream)  # its queued messages are still written with its limits
        else:
            self._limits.pop(stream, None)

    def table_size(self) -> int:
        """How many per-stream entries this node keeps in memory."""
        return len(self._limits) + len(self._delivered) + len(self._released)

    def read_held(self, stream: str, epoch: str) -> tuple[str, int, list[tuple[int, int, bytes]]] | None:
        """Every message of ``epoch`` Redis still holds (None when in another epoch or unreachable). Yields."""
        if not self.cluster.connected:
            return None
        try:
            return self.log.read_held(stream, epoch, self._limits_of(stream)[1])
        except self._errors as exc:
            logger.info("history of %s unreadable: %s", stream, exc)
            return None

    def publish(self, stream: str, opcode: int, data: bytes, deliver: DeliverCallback) -> None:
        """Queue a message; ``deliver(epoch, offset)`` runs once Redis gave its offset, in order. Never yields."""
        dropped = self.queue.add(stream, opcode, bytes(data), deliver)
        if dropped is not None:
            self._count("history_dropped")
            if not self._drop_logged:
                self._drop_logged = True
                logger.error(
                    "history queue full (%d messages, WS_HISTORY_QUEUE): dropping the oldest; "
                    "the streams that lose one start a new epoch",
                    self.queue.limit,
                    extra={"event": "history_dropped", "stream": dropped.stream},
                )
        self._wake.set()

    def read_since(self, stream: str, epoch: str, offset: int) -> tuple[str, int, list[tuple[int, int, bytes]]] | None:
        """What ``stream`` holds after ``offset`` of ``epoch``, or None if it cannot be whole. Yields."""
        if self.cluster.connected:
            try:
                return self.log.read_since(stream, epoch, offset, self._limits_of(stream)[1])
            except self._errors as exc:
                logger.info("history of %s unreadable: %s", stream, exc)
        if self._delivered.get(stream) == (epoch, offset):
            return epoch, offset, []
        raise HistoryUnavailable(f"Redis unreachable: cannot replay {stream} after {epoch}:{offset}")

    def position(self, stream: str) -> tuple[str, int]:
        """``stream``'s current epoch and last offset. Yields."""
        if self.cluster.connected:
            try:
                return self.log.position(stream)
            except self._errors as exc:
                logger.info("position of %s unreadable: %s", stream, exc)
        known = self._delivered.get(stream)
        if known is None:
            raise HistoryUnavailable(f"Redis unreachable: no position known for {stream}")
        return known

    def stop(self, timeout: float = 1.0) -> None:
        """Write what is queued (``timeout`` seconds at most, while Redis answers), then stop the writer."""
        if self.cluster is None:
            return
        with gevent.Timeout(timeout, False):
            while len(self.queue) and self.cluster.connected and not self._outage.failing:
                self._wake.set()
                gevent.sleep(0.01)
        self._stopped = True
        if len(self.queue):
            logger.warning("%d history message(s) not written: Redis did not take them in time", len(self.queue))
        if self._writer is not None:
            self._writer.kill(block=True, timeout=timeout)

    # -- what the cluster's subscriber hands over --------------------------------------------

    def received(self, raw: bytes) -> None:
        """A message Redis published on the history channel: deliver it to this node's clients."""
        published = parse_published(raw)
        if published is None:
            return
        if published.node == self.cluster.node_id:
            message = self.queue.echoed(published.seq, published.epoch, published.offset)
            if message is not None:
                self._deliver(message)
            return
        self._entering(published.stream, published.epoch, published.offset)
        self._delivered[published.stream] = (published.epoch, published.offset)
        self._count("history_received")
        self.hub.deliver_stream(published.stream, published.epoch, published.offset, published.opcode, published.data)

    def _entering(self, stream: str, epoch: str, offset: int) -> None:
        """Before delivering ``offset`` of ``epoch``: if this node is still on another epoch of
        ``stream``, deliver the new epoch's earlier messages, read from Redis.

        The epoch began while this node was not subscribed (Redis restarted, or failed
        over: another node wrote first): without them, its clients would go on from the
        middle of the epoch. Those messages are the other nodes' (this node's own come in order).
        """
        known = self._delivered.get(stream)
        if known is None or known[0] == epoch or offset <= 1:
            return
        # One at a time (the read yields): a second one, from the other greenlet, would
        # deliver this node's own message of the epoch to its plain clients a second time.
        with self._catching_up:
            known = self._delivered.get(stream)
            if known[0] == epoch:
                return  # done meanwhile
            try:
                replay = self.log.read_since(stream, epoch, 0, self._limits_of(stream)[1])
            except self._errors as exc:
                logger.info("history of %s unreadable: %s", stream, exc)
                return
            if replay is None or replay[0] != epoch:
                return  # gone already: the clients are told continuity was lost
            for entry, opcode, data in replay[2]:
                if entry >= offset:
                    break
                self._delivered[stream] = (epoch, entry)
                self.hub.deliver_stream(stream, epoch, entry, opcode, data)

    def subscribing(self) -> None:
        """The cluster subscribes (again): what was written and not echoed yet will not be; deliver it now."""
        for message in self.queue.resubscribed():
            self._deliver(message)

    def subscribed(self) -> None:
        """The cluster listens to the history channel (again): write what waits."""
        self._wake.set()

    # -- the writer ---------------------------------------------------------------------------

    def _limits_of(self, stream: str) -> tuple[int, float | None]:
        return self._limits.get(stream, (DEFAULT_SIZE, None))

    def _count(self, name: str, n: int = 1) -> None:
        if self.hub is not None:
            self.hub.stats[name] += n

    def _deliver(self, message: PendingMessage) -> None:
        self._entering(message.stream, message.epoch, message.offset)
        self._delivered[message.stream] = (message.epoch, message.offset)
        try:
            message.deliver(message.epoch, message.offset)
        except Exception:
            logger.exception("delivering message %d of %s failed", message.offset, message.stream)

    def _run_writer(self) -> None:
        delay = 0.05
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            while len(self.queue) and self.cluster.connected and not self._stopped:
                if self._write_batch():
                    delay = 0.05
                else:
                    gevent.sleep(delay)
                    delay = min(delay * 2, 1.0)

    def _write_batch(self) -> bool:
        """Send the next batch and deliver what is due; False when it must be tried again later."""
        queue = self.queue
        batch = queue.next_batch()
        try:
            results = self.log.append(batch[0].seq, batch, self._limits_of)
        except self._errors as exc:
            if not isinstance(exc, self._refusal):
                self._outage.failed(exc)  # unreachable: the batch waits, in order
                return False
            refusal: Exception = exc
        except Exception as exc:
            logger.exception("history batch could not be sent")
            refusal = exc
        else:
            self._refusals = 0
            self._outage.answered()
            self._count("history_written", len(results))
            for message in queue.written(results):
                self._deliver(message)
            if self._released and not len(queue):
                for name in self._released:
                    self._limits.pop(name, None)
                self._released.clear()
            return True
        # An error answer (out of memory, a key of the wrong type): tried a few times, then dropped.
        self._refusals += 1
        if self._refusals < REFUSALS_BEFORE_DROP:
            return False
        self._refusals = 0
        dropped = queue.refused()
        self._count("history_dropped", len(dropped))
        logger.error(
            "Redis refused %d history message(s) %d times: dropped, their streams start a new epoch (%s)",
            len(dropped),
            REFUSALS_BEFORE_DROP,
            refusal,
            extra={"event": "history_dropped"},
        )
        return True
