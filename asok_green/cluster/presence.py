"""Presence across a Redis cluster: what this node holds, kept in Redis, and what the other nodes hold.

A node keeps its users in the set ``<prefix>:presence:node:<id>``, the (room,
user) pairs of its connections in rooms in ``<prefix>:presence:rooms:<id>``
(JSON ``[room, user]``), and its liveness in the sorted set
``<prefix>:presence:nodes`` (score: the time its heartbeat expires, by Redis'
clock); its heartbeat refreshes the TTL of all three. Changes are announced on
the channel ``<prefix>:presence`` (``add`` / ``remove`` of users, ``join`` /
``leave`` of pairs, ``sync`` of everything, ``down``).

:class:`Presence` is this bookkeeping for one node: the changes of its holding
not written yet, the Lua scripts that write and read the sets, and what the
other nodes' events mean for the hub. It does Redis I/O only when its owner,
the cluster node (asok_green.cluster.redis_node), calls it from its own
greenlets; the publisher greenlet is the one writer of this node's sets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from time import monotonic
from typing import Any

from ..core import state

logger = logging.getLogger("asok_green.cluster")

#: Heartbeats (each also sweeps out the nodes whose entry expired) per ``WS_PRESENCE_TTL``.
HEARTBEATS_PER_TTL = 6
#: Share of ``WS_PRESENCE_TTL`` a node's entry lasts after each heartbeat. A dead node's
#: users are offline everywhere within one TTL (its lease, then at most one sweep by
#: another node), and a live node may miss four heartbeats in a row before it is taken
#: for dead (two thirds of a TTL, as with a lease of a whole TTL and three heartbeats).
LEASE_SHARE = 5 / 6


def heartbeat_interval(ttl: float) -> float:
    """Seconds between two heartbeats of a node whose presence TTL is ``ttl``."""
    return max(0.1, ttl / HEARTBEATS_PER_TTL)


# Every script reads the time from Redis, so nodes on machines with different clocks agree.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

#: KEYS: nodes, this node's users, this node's room pairs.
#: ARGV: node id, ttl ms, channel, sync event, number of users, users..., pairs...
_REGISTER = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local users = tonumber(ARGV[5])
redis.call('DEL', KEYS[2], KEYS[3])
for i = 6, 5 + users do redis.call('SADD', KEYS[2], ARGV[i]) end
for i = 6 + users, #ARGV do redis.call('SADD', KEYS[3], ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 3)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
)

#: KEYS: nodes. ARGV: node id, ttl ms, users-set key prefix, channel, pairs-set key prefix.
#: Refreshes this node (-1 if it was dropped: it must register again), then removes dead nodes.
_HEARTBEAT = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if known then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', ARGV[3] .. ARGV[1], ttl)
  redis.call('PEXPIRE', ARGV[5] .. ARGV[1], ttl)
  redis.call('PEXPIRE', KEYS[1], ttl * 3)
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  redis.call('DEL', ARGV[3] .. node, ARGV[5] .. node)
  redis.call('PUBLISH', ARGV[4], cjson.encode({target = 'presence', name = 'down', msg = node, node_id = ARGV[1]}))
end
if not known then return -1 end
return #dead
"""
)

#: KEYS: nodes. ARGV: users-set key prefix, pairs-set key prefix.
#: Returns {node, {users...}, {pairs...}, ...} for every live node.
_SNAPSHOT = (
    _NOW
    + """
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  out[#out + 1] = node
  out[#out + 1] = redis.call('SMEMBERS', ARGV[1] .. node)
  out[#out + 1] = redis.call('SMEMBERS', ARGV[2] .. node)
end
return out
"""
)


def _user_key(user_id: Any) -> str:
    return json.dumps(user_id, default=str)


def _pair_key(room: str, user_id: Any) -> str:
    return json.dumps([room, user_id], default=str)


def _decoded(item: Any) -> Any:
    if isinstance(item, (bytes, str)):
        try:
            return json.loads(item)
        except ValueError:
            return None
    return item


def _is_user_id(item: Any) -> bool:
    return isinstance(item, (int, str, float)) and not isinstance(item, bool)


def user_ids(raw: Iterable[Any]) -> list:
    """User ids decoded from Redis set members or an event, skipping anything unhashable."""
    ids = []
    for item in raw:
        item = _decoded(item)
        if _is_user_id(item):
            ids.append(item)
    return ids


def room_users(raw: Any) -> list[tuple[str, Any]]:
    """(room, user) pairs decoded from Redis set members or an event, skipping anything malformed."""
    pairs = []
    if not isinstance(raw, list):
        return pairs
    for item in raw:
        item = _decoded(item)
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and _is_user_id(item[1]):
            pairs.append((item[0], item[1]))
    return pairs


class Presence:
    """One node's presence in Redis: its changes not written yet, its sets and heartbeat, the others' events.

    ``wake`` asks the node's publisher greenlet to run (it writes what
    :attr:`pending` says, and registers again when :attr:`must_register`).
    """

    def __init__(self, hub: Any, redis: Any, prefix: str, node_id: str, ttl: float, wake: Callable[[], None]):
        """Keys under ``prefix`` for ``node_id``; nothing is sent before the node calls."""
        self.hub = hub
        self.node_id = node_id
        self.ttl = ttl
        #: How long this node's entry and sets last after each write, in ms (see :data:`LEASE_SHARE`).
        self.lease_ms = int(ttl * LEASE_SHARE * 1000)
        self._wake = wake
        #: The channel every node announces its presence changes on.
        self.channel = f"{prefix}:presence"
        self._nodes_key = f"{prefix}:presence:nodes"
        self._node_prefix = f"{prefix}:presence:node:"
        self._rooms_prefix = f"{prefix}:presence:rooms:"
        self._node_key = self._node_prefix + node_id
        self._rooms_key = self._rooms_prefix + node_id
        self._register_script = redis.register_script(_REGISTER)
        self._heartbeat_script = redis.register_script(_HEARTBEAT)
        self._snapshot_script = redis.register_script(_SNAPSHOT)
        # Changes of this node's holding not yet sent: user -> held, (room, user) -> held.
        self._users: dict[Any, bool] = {}
        self._rooms: dict[tuple[str, Any], bool] = {}
        #: True when this node's whole holding must be written again (joined, reconnected, dropped).
        self.must_register = False
        # Nodes missing from Redis after a reconnect: node -> when they count as down.
        self._unconfirmed: dict[str, float] = {}

    def envelope(self, name: str, msg: Any) -> str:
        """A presence event of this node, as Asok's adapter envelopes are made."""
        return json.dumps({"target": "presence", "name": name, "msg": msg, "node_id": self.node_id}, default=str)

    # -- this node's changes (never yields) ---------------------------------------------

    def note(self, changes: list[Any]) -> bool:
        """Keep the ``Local*`` changes of a hub transition for the next write; True if there was one."""
        queued = False
        for change in changes:
            kind = type(change)
            if kind is state.LocalUserAdded:
                self._users[change.user_id] = True
            elif kind is state.LocalUserRemoved:
                self._users[change.user_id] = False
            elif kind is state.LocalRoomUserAdded:
                self._rooms[(change.room, change.user_id)] = True
            elif kind is state.LocalRoomUserRemoved:
                self._rooms[(change.room, change.user_id)] = False
            else:
                continue
            queued = True
        return queued

    @property
    def pending(self) -> bool:
        """True while some change of this node's holding is not written yet."""
        return bool(self._users or self._rooms)

    # -- writes (the publisher greenlet only: the one writer of this node's sets) ----------

    def register(self) -> None:
        """Write this node's whole holding and announce it with ``sync``."""
        # Read and clear together, with no yield between: the script below carries every
        # change made so far, and the batches that follow carry only the ones made after.
        users = self.hub.state.held_users()
        pairs = self.hub.state.held_room_users()
        self._users.clear()
        self._rooms.clear()
        self.must_register = False
        event = json.dumps(
            {"target": "presence", "name": "sync", "msg": users, "rooms": pairs, "node_id": self.node_id},
            default=str,
        )
        args = [
            self.node_id,
            self.lease_ms,
            self.channel,
            event,
            len(users),
            *map(_user_key, users),
            *(_pair_key(room, user) for room, user in pairs),
        ]
        self._register_script(keys=[self._nodes_key, self._node_key, self._rooms_key], args=args)

    def write_changes(self, pipe: Any) -> None:
        """Add the commands that write and announce the pending changes to ``pipe``; they are then taken."""
        users, self._users = self._users, {}
        rooms, self._rooms = self._rooms, {}
        ttl_ms = self.lease_ms
        added = [user for user, held in users.items() if held]
        removed = [user for user, held in users.items() if not held]
        joined = [list(pair) for pair, held in rooms.items() if held]
        left = [list(pair) for pair, held in rooms.items() if not held]
        # Users before their rooms when they come, rooms before users when they go, as the hub says them.
        if added:
            pipe.sadd(self._node_key, *map(_user_key, added))
            pipe.pexpire(self._node_key, ttl_ms)
            pipe.publish(self.channel, self.envelope("add", added))
        if joined:
            pipe.sadd(self._rooms_key, *(_pair_key(room, user) for room, user in joined))
            pipe.pexpire(self._rooms_key, ttl_ms)
            pipe.publish(self.channel, self.envelope("join", joined))
        if left:
            pipe.srem(self._rooms_key, *(_pair_key(room, user) for room, user in left))
            pipe.publish(self.channel, self.envelope("leave", left))
        if removed:
            pipe.srem(self._node_key, *map(_user_key, removed))
            pipe.publish(self.channel, self.envelope("remove", removed))

    def leave(self, pipe: Any) -> None:
        """Add the commands that take this node out of the cluster and say it is ``down`` to ``pipe``."""
        pipe.zrem(self._nodes_key, self.node_id)
        pipe.delete(self._node_key, self._rooms_key)
        pipe.publish(self.channel, self.envelope("down", self.node_id))

    def heartbeat(self) -> None:
        """Refresh this node's TTL and remove the nodes whose heartbeat stopped (the heartbeat greenlet)."""
        keys = [self._nodes_key]
        args = [self.node_id, self.lease_ms, self._node_prefix, self.channel, self._rooms_prefix]
        if self._heartbeat_script(keys=keys, args=args) == -1:
            logger.warning("node %s was dropped from the cluster: registering again", self.node_id)
            self.ask_to_register()
        self._expire_unconfirmed()

    def ask_to_register(self) -> None:
        """Have the publisher write this node's whole holding again (it is the one writer)."""
        self.must_register = True
        self._wake()

    # -- what the other nodes hold ---------------------------------------------------------

    def read_others(self) -> None:
        """Read every live node's holding from Redis and tell the hub (once subscribed: nothing is missed)."""
        raw = self._snapshot_script(keys=[self._nodes_key], args=[self._node_prefix, self._rooms_prefix])
        nodes = {}
        for i in range(0, len(raw) - 2, 3):
            node = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
            nodes[node] = (user_ids(raw[i + 1]), room_users(list(raw[i + 2])))
        # A node missing from Redis may be one that has not re-registered after a Redis
        # restart yet: it gets one TTL to show up before its users go offline here.
        deadline = monotonic() + self.ttl
        for node in self.hub.state.live_nodes():
            if node not in nodes:
                self._unconfirmed.setdefault(node, deadline)
        for node, (users, pairs) in nodes.items():
            if node != self.node_id:
                self._unconfirmed.pop(node, None)
                self.hub.node_synced(node, users, pairs)

    def on_event(self, event: dict) -> None:
        """A presence event read on the channel: tell the hub what it changes."""
        name, node, msg = event.get("name"), event.get("node_id"), event.get("msg")
        hub = self.hub
        if name == "down":
            if msg == self.node_id:
                # Declared dead (frozen or cut off for longer than the TTL): come back.
                self.ask_to_register()
            elif isinstance(msg, str):
                self._unconfirmed.pop(msg, None)
                hub.node_down(msg)
            return
        if node == self.node_id or not isinstance(node, str) or not isinstance(msg, list):
            return
        if name == "sync":
            self._unconfirmed.pop(node, None)
            hub.node_synced(node, user_ids(msg), room_users(event.get("rooms")))
        elif name == "add":
            hub.node_added(node, users=user_ids(msg))
        elif name == "remove":
            hub.node_removed(node, users=user_ids(msg))
        elif name == "join":
            hub.node_added(node, room_users=room_users(msg))
        elif name == "leave":
            hub.node_removed(node, room_users=room_users(msg))

    def _expire_unconfirmed(self) -> None:
        now = monotonic()
        for node, deadline in list(self._unconfirmed.items()):
            if deadline <= now:
                logger.info("node %s did not come back within %.0fs: its users are offline", node, self.ttl)
                del self._unconfirmed[node]
                self.hub.node_down(node)
