"""The streams in Redis: the Lua scripts that append, read and locate, one round trip each.

Per stream ``S`` (prefix ``asok:ws`` by default): ``<prefix>:history:S``, a Redis
stream (one entry per message, id ``0-<offset>``, fields ``p`` opcode, ``d``
payload, ``t`` Redis' clock in ms), and ``<prefix>:history-meta:S``, a hash
(``epoch``, ``last``, ``gen``). A batch is appended, trimmed and published by one script;
a batch sent again after a lost reply is answered from ``<prefix>:history-ack:<node>``
and not written twice. The store that drives this is asok_green.history.redis_store.

``gen`` is the replication id of the primary that last wrote the stream. A
replica promoted by Sentinel (or by hand) gets a new one; its copy may lack the
last writes the old primary acknowledged (replication is asynchronous), and
giving their offsets again would be a silent gap for the clients that had them.
So the first write after a failover starts a new epoch: the clients are told.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .store import new_epoch

if TYPE_CHECKING:
    from .write_queue import PendingMessage

#: Seconds the script remembers a node's last batch (to answer a repeat with the same offsets).
ACK_SECONDS = 3600


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
local info = redis.pcall('INFO', 'replication')
local gen = type(info) == 'string' and string.match(info, 'master_replid:(%w+)') or ''
local made = 0
-- A new epoch for a stream: its old entries go, and so do keys of a wrong type in its place.
local function fresh(skey, mkey)
  made = made + 1
  local epoch = candidate
  if made > 1 then epoch = candidate .. '-' .. made end
  redis.call('DEL', skey, mkey)
  redis.call('HSET', mkey, 'epoch', epoch, 'last', 0, 'gen', gen)
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
    local known = redis.pcall('HMGET', mkey, 'epoch', 'gen')
    -- Last written by another primary (a failover since): what it acknowledged may be lost.
    if type(known) == 'table' and type(known[1]) == 'string' and (not known[2] or known[2] == gen) then
      epoch = known[1]
      if not known[2] and gen ~= '' then redis.call('HSET', mkey, 'gen', gen) end
    end
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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

    def read_held(
        self, stream: str, epoch: str, ttl: float | None = None
    ) -> tuple[str, int, list[tuple[int, int, bytes]]] | None:
        """(epoch, last offset, every entry still held within ``ttl``), or None if ``stream`` is in another epoch."""
        current, last = self.redis.hmget(self.meta_key(stream), "epoch", "last")
        if current is None or _text(current) != epoch:
            return None
        last = int(last or 0)
        oldest = (self.redis.time()[0] - ttl) * 1000 if ttl else None
        entries = []
        for entry_id, values in self.redis.xrange(self.stream_key(stream), "-", "+"):
            offset = int(_text(entry_id).partition("-")[2])
            if offset > last or (oldest is not None and int(values[b"t"]) < oldest):
                continue
            entries.append((offset, int(values[b"p"]), bytes(values[b"d"])))
        return epoch, last, entries

    def position(self, stream: str) -> tuple[str, int]:
        """``stream``'s epoch and last offset (0 when empty); a missing stream gets its epoch now."""
        raw = self._position(keys=[self.meta_key(stream), self.stream_key(stream)], args=[new_epoch()])
        return _text(raw[0]), int(raw[1])
