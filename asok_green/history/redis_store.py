"""History of streams in Redis Streams, shared by every node of a Redis cluster (asok_green.cluster.redis_node).

Offsets are global: Redis gives them, so a client resumes on any node. Per stream ``S``
(prefix ``asok:ws`` by default):

* ``<prefix>:history:S``: a Redis stream, one entry per message, id ``0-<offset>``, fields
  ``p`` (opcode), ``d`` (payload), ``t`` (Redis' clock, ms); trimmed with ``MAXLEN`` to the
  stream's size, and with ``MINID`` to its ttl;
* ``<prefix>:history-meta:S``: a hash, ``epoch`` and ``last`` (the last offset given). A stream
  whose hash is missing (new, or a Redis that lost its data) gets a new epoch.

Writing. :meth:`RedisHistoryStore.publish` only queues (the hub has already handed the message
to its plain clients). One writer greenlet sends the queue in order, in batches; each batch is
one Lua script that, per message, increments the stream's offset, appends the entry (``XADD``)
and publishes it (``PUBLISH``) with its stream, epoch and offset on ``<prefix>:history``. Every
node's cluster subscriber hands what it reads there to its store: another node's message goes to
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
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gevent
from gevent.event import Event

from ..core.node import ClusterConfigError
from ..core.outage import Outage
from .store import HistoryUnavailable

logger = logging.getLogger("asok_green.history")

#: Messages a node keeps waiting for Redis before it drops the oldest (``WS_HISTORY_QUEUE``).
DEFAULT_QUEUE = 10_000
#: Entries kept per stream when the app did not say (``configure``).
DEFAULT_SIZE = 200
#: How many messages, and about how many bytes, one script call writes at most.
BATCH_MESSAGES = 200
BATCH_BYTES = 1 << 20
#: A batch Redis refuses (an error reply, not an outage) this many times in a row is dropped.
REFUSALS_BEFORE_DROP = 3
ACK_SECONDS = 3600

DeliverCallback = Callable[[str, int], None]


# -- the Redis side ---------------------------------------------------------------------------

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

#: KEYS: this node's ack key, then (stream key, meta key) per message.
#: ARGV: batch id, channel, node id, candidate epoch, then per message:
#:       stream, seq, opcode, payload, size, ttl ms (0: none), renew (1: start a new epoch first).
#: Returns {epoch, offset, ...} per message.
_APPEND = (
    _NOW
    + """
local batch = ARGV[1]
local ack = redis.call('GET', KEYS[1])
if ack then
  local id, body = string.match(ack, '^(%d+) (.*)$')
  if id == batch then return cjson.decode(body) end
end
local channel, node, candidate = ARGV[2], ARGV[3], ARGV[4]
local made = 0
-- A new epoch for a stream: its old entries go, and so do keys of a wrong type in its place.
local function fresh(skey, mkey)
  made = made + 1
  local epoch = candidate
  if made > 1 then epoch = candidate .. '-' .. made end
  redis.call('DEL', skey, mkey)
  redis.call('HSET', mkey, 'epoch', epoch, 'last', 0)
  return epoch
end
local out = {}
local k = 2
for i = 5, #ARGV, 7 do
  local stream, seq, opcode, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local size, ttl, renew = ARGV[i + 4], tonumber(ARGV[i + 5]), ARGV[i + 6]
  local skey, mkey = KEYS[k], KEYS[k + 1]
  k = k + 2
  local epoch = false
  if renew ~= '1' then
    local known = redis.pcall('HGET', mkey, 'epoch')
    if type(known) == 'string' then epoch = known end
  end
  if not epoch then epoch = fresh(skey, mkey) end
  local offset = redis.call('HINCRBY', mkey, 'last', 1)
  local digits = string.format('%d', offset)
  local added = redis.pcall('XADD', skey, 'MAXLEN', size, '0-' .. digits, 'p', opcode, 'd', data, 't', now)
  if type(added) == 'table' and added.err then
    -- Not a stream, or ids ahead of the offsets: this stream starts over rather than fail the batch.
    epoch = fresh(skey, mkey)
    offset = redis.call('HINCRBY', mkey, 'last', 1)
    digits = string.format('%d', offset)
    redis.call('XADD', skey, 'MAXLEN', size, '0-' .. digits, 'p', opcode, 'd', data, 't', now)
  end
  if ttl > 0 then
    local cutoff = now - ttl
    local oldest = redis.call('XRANGE', skey, '-', '+', 'COUNT', 1)
    if #oldest > 0 and tonumber(oldest[1][2][6]) < cutoff then
      -- At most 64 looked at per append: the rest go at the next ones.
      local first = redis.call('XRANGE', skey, '-', '+', 'COUNT', 64)
      local keep = false
      for _, entry in ipairs(first) do
        if tonumber(entry[2][6]) >= cutoff then keep = entry[1] break end
      end
      if not keep then
        local seen = tonumber(string.match(first[#first][1], '%-(%d+)$'))
        keep = '0-' .. string.format('%d', seen + 1)
      end
      redis.call('XTRIM', skey, 'MINID', keep)
    end
    redis.call('PEXPIRE', skey, ttl)
  end
  local header = '[' .. cjson.encode(stream) .. ',' .. cjson.encode(epoch) .. ',' .. digits .. ','
    .. opcode .. ',' .. cjson.encode(node) .. ',' .. seq .. ']'
  redis.call('PUBLISH', channel, header .. '\\n' .. data)
  out[#out + 1] = epoch
  out[#out + 1] = offset
end
redis.call('SET', KEYS[1], batch .. ' ' .. cjson.encode(out), 'EX', ACK_SECONDS)
return out
""".replace("ACK_SECONDS", str(ACK_SECONDS))
)

#: KEYS: meta key, stream key. ARGV: epoch, offset, ttl ms (0: none).
#: Returns {} (no such stream), {epoch, last, 0} (cannot replay whole) or {epoch, last, 1, entries}.
_READ = (
    _NOW
    + """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {} end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local since = tonumber(ARGV[2])
if epoch ~= ARGV[1] or since > last then return {epoch, last, 0} end
if since == last then return {epoch, last, 1, {}} end
local first = '0-' .. string.format('%d', since + 1)
local entries = redis.call('XRANGE', KEYS[2], first, '+')
if #entries == 0 or entries[1][1] ~= first then return {epoch, last, 0} end
local ttl = tonumber(ARGV[3])
if ttl > 0 and tonumber(entries[1][2][6]) < now - ttl then return {epoch, last, 0} end
return {epoch, last, 1, entries}
"""
)

#: KEYS: meta key, stream key. ARGV: candidate epoch. Returns {epoch, last}, making the epoch if missing.
_POSITION = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'last', 0)
  return {ARGV[1], 0}
end
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'last'))}
"""


def new_epoch() -> str:
    """A fresh epoch: 8 random url-safe characters."""
    return secrets.token_urlsafe(6)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


class StreamLog:
    """The streams in Redis: append a batch, read since an offset, the position. One round trip each (may yield)."""

    def __init__(self, redis: Any, prefix: str, node_id: str, channel: str):
        """Use the client ``redis`` (redis-py), keys under ``prefix``, publishing on ``channel`` as ``node_id``."""
        self.redis = redis
        self.prefix = prefix
        self.node_id = node_id
        self.channel = channel
        self._ack_key = f"{prefix}:history-ack:{node_id}"
        self._append = redis.register_script(_APPEND)
        self._read = redis.register_script(_READ)
        self._position = redis.register_script(_POSITION)

    def stream_key(self, stream: str) -> str:
        """The Redis stream holding ``stream``'s entries."""
        return f"{self.prefix}:history:{stream}"

    def meta_key(self, stream: str) -> str:
        """The hash holding ``stream``'s epoch and last offset."""
        return f"{self.prefix}:history-meta:{stream}"

    def append(
        self, batch_id: int, batch: Sequence[PendingMessage], limits: Callable[[str], tuple[int, float | None]]
    ) -> list[tuple[str, int]]:
        """Write ``batch`` in order; the (epoch, offset) each message got.

        Sending the same ``batch_id`` again (its reply was lost) writes nothing and
        answers the same offsets.
        """
        keys = [self._ack_key]
        args: list[Any] = [batch_id, self.channel, self.node_id, new_epoch()]
        for message in batch:
            size, ttl = limits(message.stream)
            keys += (self.stream_key(message.stream), self.meta_key(message.stream))
            args += (
                message.stream,
                message.seq,
                message.opcode,
                message.data,
                max(1, int(size)),
                int(ttl * 1000) if ttl else 0,
                1 if message.renew else 0,
            )
        raw = self._append(keys=keys, args=args)
        return [(_text(raw[i]), int(raw[i + 1])) for i in range(0, len(raw), 2)]

    def read_since(
        self, stream: str, epoch: str, offset: int, ttl: float | None = None
    ) -> tuple[str, int, list[tuple[int, int, bytes]]] | None:
        """(epoch, last offset, [(offset, opcode, data), ...] after ``offset``), or None if that cannot be whole."""
        ttl_ms = int(ttl * 1000) if ttl else 0
        raw = self._read(keys=[self.meta_key(stream), self.stream_key(stream)], args=[epoch, offset, ttl_ms])
        if not raw or raw[2] != 1:
            return None
        entries = []
        for entry_id, fields in raw[3]:
            values = dict(zip(fields[::2], fields[1::2]))
            entries.append((int(_text(entry_id).partition("-")[2]), int(values[b"p"]), bytes(values[b"d"])))
        return _text(raw[0]), int(raw[1]), entries

    def position(self, stream: str) -> tuple[str, int]:
        """``stream``'s epoch and last offset (0 when empty); a missing stream gets its epoch now."""
        raw = self._position(keys=[self.meta_key(stream), self.stream_key(stream)], args=[new_epoch()])
        return _text(raw[0]), int(raw[1])


# -- what waits, in pure code ---------------------------------------------------------------


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
        #: Per stream, the (epoch, offset) of the last message this node delivered.
        self._delivered: dict[str, tuple[str, int]] = {}
        self._wake = Event()
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
            f"Redis history writes to {cluster.settings.url}",
            logger,
            meanwhile=f"queueing them in order, up to {self.queue.limit} messages (WS_HISTORY_QUEUE)",
        )
        cluster.attach_history(self)
        self._writer = gevent.spawn(self._run_writer)
        self._wake.set()

    def configure(self, stream: str, size: int, ttl: float | None) -> None:
        """Keep the last ``size`` messages of ``stream``, none older than ``ttl`` seconds (None: any age)."""
        self._limits[stream] = (max(1, int(size)), ttl)

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
        self._delivered[published.stream] = (published.epoch, published.offset)
        self._count("history_received")
        self.hub.deliver_stream(published.stream, published.epoch, published.offset, published.opcode, published.data)

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
