"""Several processes or machines as one server: broadcasts and presence shared through Redis.

Enabled by ``WS_ADAPTER=redis`` with ``WS_REDIS_URL`` (app config or environment),
by ``WebSocketServer(adapter=...)``, or by ``asok serve --gevent --workers N``.
Each serving process is a *node* with a random id.

Broadcasts: the hub delivers to its own clients first, then hands the message
to :meth:`RedisCluster.publish`, which only queues it. One publisher greenlet
per node sends the queue to Redis in pipelined batches, as Asok's
``RedisWebSocketAdapter`` envelopes ``{"target", "name", "msg", "node_id"}`` on
``asok:ws:path:<path>`` and ``asok:ws:room:<room>``. Every node subscribes to
those channels and delivers what other nodes (ours or Asok's) published to its
own clients, so each client gets a message exactly once.

Presence: a node keeps its users in the set ``asok:ws:presence:node:<id>``, the
(room, user) pairs of its connections in rooms in ``asok:ws:presence:rooms:<id>``
(JSON ``[room, user]``), and its liveness in the sorted set
``asok:ws:presence:nodes`` (score: the time its heartbeat expires, by Redis'
clock); its heartbeat refreshes the TTL of all three. Changes are announced on
the channel ``asok:ws:presence`` (``add`` / ``remove`` of users, ``join`` /
``leave`` of pairs, ``sync`` of everything, ``down``), so every node knows what
every other live node holds, and its hub (asok_green.core.state) announces to its own
clients each change of the cluster-wide view: a user is online while any node
holds them, and in room R while any node holds them in R. A node that stops
heartbeating (killed, frozen, cut off) is removed by the first other node to
notice, which announces it ``down``; events from a node that is not live are
ignored until it registers again with a ``sync``.

One writer: only the publisher greenlet writes this node's sets and announces
its changes (the subscriber and the heartbeat only ask it to register again), so
a late ``remove`` can never undo a newer registration.

Stream history (asok_green.history.redis_store): the subscriber also listens on
``asok:ws:history`` and hands what it reads there to the history store, in the
order Redis published it; the store writes through this node's Redis client.

Redis unreachable: clients of this node keep getting local broadcasts; messages
for other nodes are dropped, and the outage is logged once. When Redis is back
the node subscribes again, republishes its users and re-reads everyone else's.

Nothing here yields while it changes the hub's state: Redis I/O happens only in
this module's own greenlets, and their updates to shared state happen after a
reply has been read, between two yields.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from ..core import state
from ..protocol.frames import OP_TEXT

if TYPE_CHECKING:
    from ..protocol.outgoing import Outgoing
    from ..server.hub import WebSocketServer

logger = logging.getLogger("asok_green.cluster")

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "asok:ws"
DEFAULT_PRESENCE_TTL = 30.0
#: Set by ``--workers N`` in each worker's environment.
WORKERS_ENV = "ASOK_GREEN_WORKERS"

_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_MAX_OUTBOX = 10_000
_BATCH = 500
_STOP_TIMEOUT = 1.0
_FIRST_CONNECT_WAIT = 3.0


class ClusterConfigError(ValueError):
    """The cluster settings cannot work: a message for the person who started the server."""


@dataclass(frozen=True)
class ClusterSettings:
    """Where the cluster's Redis is, the key and channel prefix, and the presence heartbeat TTL."""

    url: str
    prefix: str = DEFAULT_PREFIX
    presence_ttl: float = DEFAULT_PRESENCE_TTL


def worker_count() -> int:
    """How many processes ``--workers`` started on this port (1 when not started by it)."""
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1


def _setting(config: Any, key: str) -> Any:
    value = config.get(key) if hasattr(config, "get") else None
    if value is None or value == "":
        value = os.environ.get(key)
    return value or None


def resolve_settings(hub: WebSocketServer) -> ClusterSettings | None:
    """The cluster settings of ``hub``, or None for a single process.

    In order: the ``adapter=`` constructor argument (``"redis"``, a ``redis://``
    URL, or an Asok ``RedisWebSocketAdapter``), then ``WS_ADAPTER`` and
    ``WS_REDIS_URL`` from the app's config, then from the environment, as Asok
    resolves them. Under ``--workers N`` (N > 1) Redis is required and its URL
    must be given explicitly: :class:`ClusterConfigError` otherwise. Any other
    Asok adapter object gives None, even under ``--workers``: the hub drives it
    (asok_green.cluster.adapters); an object that is no adapter is a
    :class:`ClusterConfigError`.
    """
    config = getattr(hub.app, "config", None) or {}
    adapter = hub.adapter
    url = None
    prefix = DEFAULT_PREFIX
    if isinstance(adapter, str):
        kind = "redis" if adapter.startswith(_URL_SCHEMES) else adapter.lower()
        url = adapter if adapter.startswith(_URL_SCHEMES) else None
    elif adapter is not None:
        url = getattr(adapter, "redis_url", None)
        prefix = getattr(adapter, "channel_prefix", None) or DEFAULT_PREFIX
        if not url:
            from .adapters import AdapterRefused, is_custom_adapter

            try:
                if is_custom_adapter(adapter):
                    return None  # it carries the broadcasts itself (asok_green.cluster.adapters)
            except AdapterRefused as exc:
                raise ClusterConfigError(str(exc)) from None
        kind = "redis" if url else "memory"
    else:
        kind = str(_setting(config, "WS_ADAPTER") or "memory").lower()
    workers = worker_count()
    if workers > 1:
        kind = "redis"
    if kind != "redis":
        return None
    url = url or _setting(config, "WS_REDIS_URL")
    # Asok's config holds a default URL; several workers need one that someone chose.
    chosen = url not in (None, DEFAULT_REDIS_URL) or any(
        os.environ.get(k) for k in ("WS_REDIS_URL", "ASOK_WS_REDIS_URL")
    )
    if not chosen:
        if workers > 1:
            raise ClusterConfigError(
                f"--workers {workers} needs Redis so that the workers act as one server "
                "(broadcasts and presence across processes): set WS_REDIS_URL, e.g. "
                "WS_REDIS_URL=redis://127.0.0.1:6379/0 in the environment or .env, "
                'or app.config["WS_REDIS_URL"]'
            )
        url = url or DEFAULT_REDIS_URL
    raw_ttl = _setting(config, "WS_PRESENCE_TTL")
    try:
        ttl = float(raw_ttl) if raw_ttl is not None else DEFAULT_PRESENCE_TTL
    except (TypeError, ValueError):
        raise ClusterConfigError(f"WS_PRESENCE_TTL must be a number of seconds, not {raw_ttl!r}") from None
    if ttl <= 0:
        raise ClusterConfigError(f"WS_PRESENCE_TTL must be positive, not {raw_ttl!r}")
    return ClusterSettings(url=str(url), prefix=prefix, presence_ttl=ttl)


def join(hub: WebSocketServer) -> RedisCluster | None:
    """A started :class:`RedisCluster` for ``hub`` if its settings ask for one, else None."""
    settings = resolve_settings(hub)
    if settings is None:
        return None
    cluster = RedisCluster(hub, settings)
    cluster.start()
    return cluster


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


def _user_ids(raw: Iterable[Any]) -> list:
    """User ids decoded from Redis set members or an event, skipping anything unhashable."""
    ids = []
    for item in raw:
        item = _decoded(item)
        if _is_user_id(item):
            ids.append(item)
    return ids


def _room_users(raw: Any) -> list[tuple[str, Any]]:
    """(room, user) pairs decoded from Redis set members or an event, skipping anything malformed."""
    pairs = []
    if not isinstance(raw, list):
        return pairs
    for item in raw:
        item = _decoded(item)
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and _is_user_id(item[1]):
            pairs.append((item[0], item[1]))
    return pairs


class RedisCluster:
    """One node of a cluster of servers sharing broadcasts and presence through Redis.

    The hub calls :meth:`publish` after delivering a broadcast locally and
    :meth:`local_changes` after each change of its own presence; both return at
    once. What the other nodes hold goes to the hub's state, which answers
    ``get_online_users`` and ``get_room_users`` without a round trip.
    """

    distributed = True

    def __init__(self, hub: WebSocketServer, settings: ClusterSettings):
        """Prepare a node of ``hub`` on ``settings.url``; nothing connects before :meth:`start`."""
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ClusterConfigError(
                "WS_ADAPTER=redis needs the redis client: pip install 'asok_green[redis]'"
            ) from None
        self.hub = hub
        self.settings = settings
        self.node_id = uuid.uuid4().hex
        self.ttl = settings.presence_ttl
        self.connected = False
        self._redis_errors = (redis.RedisError, OSError)
        #: What a failed Redis call raises (an outage or an error reply).
        self.redis_errors = self._redis_errors
        # No retries inside redis-py: this module's own loop reconnects, so an outage shows at once.
        self._redis = redis.Redis.from_url(
            settings.url,
            socket_connect_timeout=2,
            socket_timeout=max(2.0, min(5.0, self.ttl)),
            retry=Retry(NoBackoff(), 0),
        )
        prefix = settings.prefix
        self._path_pattern = f"{prefix}:path:*"
        self._room_pattern = f"{prefix}:room:*"
        self._presence_channel = f"{prefix}:presence"
        #: Where the history store (asok_green.history.redis_store) publishes each stream message with its offset.
        self.history_channel = f"{prefix}:history"
        self._history_channel_bytes = self.history_channel.encode()
        self._history: Any = None
        self._nodes_key = f"{prefix}:presence:nodes"
        self._node_prefix = f"{prefix}:presence:node:"
        self._rooms_prefix = f"{prefix}:presence:rooms:"
        self._node_key = self._node_prefix + self.node_id
        self._rooms_key = self._rooms_prefix + self.node_id
        self._register_script = self._redis.register_script(_REGISTER)
        self._heartbeat_script = self._redis.register_script(_HEARTBEAT)
        self._snapshot_script = self._redis.register_script(_SNAPSHOT)
        self._outbox: deque = deque()
        # Changes of this node's holding not yet sent: user -> held, (room, user) -> held.
        self._pending_users: dict[Any, bool] = {}
        self._pending_rooms: dict[tuple[str, Any], bool] = {}
        self._wake = Event()
        self._ready = Event()
        self._must_register = False
        self._outage_logged = False
        self._stopped = False
        self._greenlets: list[gevent.Greenlet] = []
        # Nodes missing from Redis after a reconnect: node -> when they count as down.
        self._unconfirmed: dict[str, float] = {}

    @property
    def redis(self) -> Any:
        """The redis-py client of this node (its settings and connection pool), for the history store."""
        return self._redis

    def attach_history(self, store: Any) -> None:
        """Hand what arrives on the history channel to ``store.received(data)``, and tell it each subscription.

        ``store.subscribing()`` runs before every (re)subscription (what the old
        one did not bring will not come), ``store.subscribed()`` once the channel
        is listened to again.
        """
        self._history = store
        if self.connected:
            store.subscribed()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; wait (a few seconds at most) for the first connection."""
        self._greenlets = [
            gevent.spawn(self._run_subscriber),
            gevent.spawn(self._run_publisher),
            gevent.spawn(self._run_heartbeat),
        ]
        self._ready.wait(_FIRST_CONNECT_WAIT)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Leave the cluster: send what is queued, then tell the others this node is gone.

        Waits ``timeout`` seconds at most; if Redis cannot be reached the other
        nodes notice through the heartbeat TTL instead.
        """
        if self._stopped:
            return
        self._stopped = True
        publisher = self._greenlets[1] if len(self._greenlets) > 1 else None
        if publisher is not None:
            publisher.kill(block=True, timeout=timeout)
        # The publisher is gone: this greenlet is now the one writer of this node's sets.
        if self.connected:
            down = self._envelope("presence", "down", self.node_id)
            with gevent.Timeout(timeout, False):
                try:
                    while self._outbox:
                        self._send_batch()
                    pipe = self._redis.pipeline(transaction=True)
                    pipe.zrem(self._nodes_key, self.node_id)
                    pipe.delete(self._node_key, self._rooms_key)
                    pipe.publish(self._presence_channel, down)
                    pipe.execute()
                except self._redis_errors as exc:
                    logger.info("could not leave the cluster cleanly: %s", exc)
        self.connected = False
        gevent.killall(self._greenlets, block=True, timeout=timeout)
        self._redis.close()

    # -- what the hub calls (never yields) -----------------------------------------

    def publish(self, target: str, name: str, message: Outgoing) -> None:
        """Queue a broadcast, already delivered here, for the other nodes (``target``: ``"path"`` or ``"room"``)."""
        if not self.connected:
            self.hub.stats["cluster_dropped"] += 1
            return
        if len(self._outbox) >= _MAX_OUTBOX:
            self.hub.stats["cluster_dropped"] += 1
            return
        self._outbox.append((target, name, message))
        self._wake.set()

    def local_changes(self, changes: list[Any]) -> None:
        """Queue the changes of this node's holding (users, users in rooms) for the other nodes."""
        if self._stopped:
            return
        queued = False
        for change in changes:
            kind = type(change)
            if kind is state.LocalUserAdded:
                self._pending_users[change.user_id] = True
            elif kind is state.LocalUserRemoved:
                self._pending_users[change.user_id] = False
            elif kind is state.LocalRoomUserAdded:
                self._pending_rooms[(change.room, change.user_id)] = True
            elif kind is state.LocalRoomUserRemoved:
                self._pending_rooms[(change.room, change.user_id)] = False
            else:
                continue
            queued = True
        if queued:
            self._wake.set()

    # -- what the other nodes say ----------------------------------------------------

    def _on_presence(self, event: dict) -> None:
        name, node, msg = event.get("name"), event.get("node_id"), event.get("msg")
        if name == "down":
            if msg == self.node_id:
                # Declared dead (frozen or cut off for longer than the TTL): come back.
                self._must_register = True
                self._wake.set()
            elif isinstance(msg, str):
                self._unconfirmed.pop(msg, None)
                self.hub.node_down(msg)
            return
        if node == self.node_id or not isinstance(node, str) or not isinstance(msg, list):
            return
        if name == "sync":
            self._unconfirmed.pop(node, None)
            self.hub.node_synced(node, _user_ids(msg), _room_users(event.get("rooms")))
        elif name == "add":
            self.hub.node_added(node, users=_user_ids(msg))
        elif name == "remove":
            self.hub.node_removed(node, users=_user_ids(msg))
        elif name == "join":
            self.hub.node_added(node, room_users=_room_users(msg))
        elif name == "leave":
            self.hub.node_removed(node, room_users=_room_users(msg))

    def _apply_snapshot(self, nodes: dict[str, tuple[list, list]]) -> None:
        # A node missing from Redis may be one that has not re-registered after a Redis
        # restart yet: it gets one TTL to show up before its users go offline here.
        deadline = monotonic() + self.ttl
        for node in self.hub.state.live_nodes():
            if node not in nodes:
                self._unconfirmed.setdefault(node, deadline)
        for node, (users, room_users) in nodes.items():
            if node != self.node_id:
                self._unconfirmed.pop(node, None)
                self.hub.node_synced(node, users, room_users)

    def _expire_unconfirmed(self) -> None:
        now = monotonic()
        for node, deadline in list(self._unconfirmed.items()):
            if deadline <= now:
                logger.info("node %s did not come back within %.0fs: its users are offline", node, self.ttl)
                del self._unconfirmed[node]
                self.hub.node_down(node)

    # -- Redis I/O (this module's greenlets only) -------------------------------------

    def _outage(self, exc: BaseException) -> None:
        if self._stopped:
            return
        self.connected = False
        if not self._outage_logged:
            self._outage_logged = True
            logger.error(
                "Redis at %s unreachable (%s): serving this node's clients only until it is back",
                self.settings.url,
                exc,
                extra={"event": "redis_down", "node": self.node_id, "cause": str(exc)},
            )

    def _run_subscriber(self) -> None:
        delay = 0.1
        while not self._stopped:
            pubsub = self._redis.pubsub()
            try:
                self._connect(pubsub)
                delay = 0.1
                while self.connected and not self._stopped:
                    item = pubsub.get_message(timeout=1.0)
                    if item is not None:
                        self._on_item(item)
            except Exception as exc:
                # Killed by stop() in the middle of a read, redis-py may raise anything.
                if self._stopped:
                    return
                if not isinstance(exc, self._redis_errors):
                    logger.exception("cluster subscriber failed: reconnecting")
                self._outage(exc)
            finally:
                self._ready.set()
                try:
                    pubsub.close()
                except self._redis_errors:
                    pass
            gevent.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _connect(self, pubsub: Any) -> None:
        if self._history is not None:
            self._history.subscribing()
        pubsub.psubscribe(self._path_pattern, self._room_pattern)
        pubsub.subscribe(self._presence_channel, self.history_channel)
        confirmed = 0
        deadline = monotonic() + 5
        while confirmed < 4:
            if monotonic() > deadline:
                raise TimeoutError("Redis did not confirm the subscriptions")
            item = pubsub.get_message(timeout=1.0)
            if item is None:
                continue
            if item["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
            else:
                self._on_item(item)
        # Subscribed first, so nothing published from now on is missed; then read who the
        # others hold, and have the publisher say who we hold.
        raw = self._snapshot_script(keys=[self._nodes_key], args=[self._node_prefix, self._rooms_prefix])
        nodes = {}
        for i in range(0, len(raw) - 2, 3):
            node = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
            nodes[node] = (_user_ids(raw[i + 1]), _room_users(list(raw[i + 2])))
        self._apply_snapshot(nodes)
        self._must_register = True
        self.connected = True
        if self._outage_logged:
            logger.warning(
                "Redis at %s is back: resubscribed and presence republished",
                self.settings.url,
                extra={"event": "redis_back", "node": self.node_id},
            )
        else:
            logger.info(
                "node %s joined the cluster on Redis at %s",
                self.node_id,
                self.settings.url,
                extra={"event": "cluster_joined", "node": self.node_id},
            )
        self._outage_logged = False
        if self._history is not None:
            self._history.subscribed()
        self._ready.set()
        self._wake.set()

    def _register(self) -> None:
        """Publisher only: write this node's whole holding and announce it with ``sync``."""
        # Read and clear together, with no yield between: the script below carries every
        # change made so far, and the batches that follow carry only the ones made after.
        users = self.hub.state.held_users()
        room_users = self.hub.state.held_room_users()
        self._pending_users.clear()
        self._pending_rooms.clear()
        self._must_register = False
        event = json.dumps(
            {"target": "presence", "name": "sync", "msg": users, "rooms": room_users, "node_id": self.node_id},
            default=str,
        )
        ttl_ms = int(self.ttl * 1000)
        args = [
            self.node_id,
            ttl_ms,
            self._presence_channel,
            event,
            len(users),
            *map(_user_key, users),
            *(_pair_key(room, user) for room, user in room_users),
        ]
        self._register_script(keys=[self._nodes_key, self._node_key, self._rooms_key], args=args)

    def _on_item(self, item: dict) -> None:
        try:
            self._dispatch(item)
        except Exception:
            # One bad message (or a handler that fails on it) must not end the subscription.
            logger.exception("cluster message could not be handled: skipped")

    def _dispatch(self, item: dict) -> None:
        if item.get("type") not in ("message", "pmessage"):
            return
        if item.get("channel") == self._history_channel_bytes:
            if self._history is not None:
                self._history.received(item["data"])
            return
        try:
            envelope = json.loads(item["data"])
        except (ValueError, TypeError):
            return
        if not isinstance(envelope, dict):
            return
        target = envelope.get("target")
        if target == "presence":
            self._on_presence(envelope)
            return
        if envelope.get("node_id") == self.node_id:
            return
        name, msg = envelope.get("name"), envelope.get("msg")
        if not isinstance(name, str) or not isinstance(msg, str):
            return
        if envelope.get("binary"):
            try:
                msg = base64.b64decode(msg)
            except ValueError:
                return
        self.hub.stats["cluster_received"] += 1
        if target == "path":
            self.hub.broadcast(name, msg, from_adapter=True)
        elif target == "room":
            self.hub.broadcast_to(name, msg, from_adapter=True)

    def _envelope(self, target: str, name: str, msg: Any) -> str:
        return json.dumps({"target": target, "name": name, "msg": msg, "node_id": self.node_id}, default=str)

    def _message_envelope(self, target: str, name: str, message: Outgoing) -> str:
        if message.opcode == OP_TEXT:
            return self._envelope(target, name, message.payload.decode("utf-8"))
        # Asok's envelope carries text: a binary message travels as base64, flagged as such.
        envelope = {
            "target": target,
            "name": name,
            "msg": base64.b64encode(message.payload).decode("ascii"),
            "node_id": self.node_id,
            "binary": True,
        }
        return json.dumps(envelope)

    def _run_publisher(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if not self.connected:
                continue
            try:
                if self._must_register:
                    self._register()
                while self.connected and (self._outbox or self._pending_users or self._pending_rooms):
                    if self._must_register:
                        self._register()
                    self._send_batch()
            except Exception as exc:
                if not isinstance(exc, self._redis_errors):
                    logger.exception("cluster publisher failed: reconnecting")
                self._outage(exc)

    def _send_batch(self) -> None:
        prefix = self.settings.prefix
        pipe = self._redis.pipeline(transaction=False)
        users, self._pending_users = self._pending_users, {}
        rooms, self._pending_rooms = self._pending_rooms, {}
        ttl_ms = int(self.ttl * 1000)
        added = [user for user, held in users.items() if held]
        removed = [user for user, held in users.items() if not held]
        joined = [list(pair) for pair, held in rooms.items() if held]
        left = [list(pair) for pair, held in rooms.items() if not held]
        # Users before their rooms when they come, rooms before users when they go, as the hub says them.
        if added:
            pipe.sadd(self._node_key, *map(_user_key, added))
            pipe.pexpire(self._node_key, ttl_ms)
            pipe.publish(self._presence_channel, self._envelope("presence", "add", added))
        if joined:
            pipe.sadd(self._rooms_key, *(_pair_key(room, user) for room, user in joined))
            pipe.pexpire(self._rooms_key, ttl_ms)
            pipe.publish(self._presence_channel, self._envelope("presence", "join", joined))
        if left:
            pipe.srem(self._rooms_key, *(_pair_key(room, user) for room, user in left))
            pipe.publish(self._presence_channel, self._envelope("presence", "leave", left))
        if removed:
            pipe.srem(self._node_key, *map(_user_key, removed))
            pipe.publish(self._presence_channel, self._envelope("presence", "remove", removed))
        # Presence first: a message sent after a join (or a leave) arrives after it, as it did here.
        presence_commands = len(pipe)
        outbox = self._outbox
        for _ in range(min(len(outbox), _BATCH)):
            target, name, message = outbox.popleft()
            pipe.publish(f"{prefix}:{target}:{name}", self._message_envelope(target, name, message))
        sent = len(pipe) - presence_commands
        if len(pipe):
            started = perf_counter()
            pipe.execute()
            self.hub.stats["cluster_published"] += sent
            if self.hub.metrics is not None:
                self.hub.metrics.publish_time.observe(perf_counter() - started)

    def _run_heartbeat(self) -> None:
        interval = max(0.1, self.ttl / 3)
        ttl_ms = int(self.ttl * 1000)
        while not self._stopped:
            gevent.sleep(interval)
            if not self.connected:
                continue
            try:
                keys = [self._nodes_key]
                args = [self.node_id, ttl_ms, self._node_prefix, self._presence_channel, self._rooms_prefix]
                if self._heartbeat_script(keys=keys, args=args) == -1:
                    logger.warning("node %s was dropped from the cluster: registering again", self.node_id)
                    # The publisher is the one writer of this node's sets.
                    self._must_register = True
                    self._wake.set()
                self._expire_unconfirmed()
            except Exception as exc:
                if self._stopped:
                    return
                if isinstance(exc, self._redis_errors):
                    self._outage(exc)
                else:
                    logger.exception("cluster heartbeat failed: going on")
