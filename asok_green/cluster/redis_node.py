"""Several processes or machines as one server: broadcasts and presence shared through Redis.

Enabled by ``WS_ADAPTER=redis`` with ``WS_REDIS_URL`` (app config or environment),
by ``WebSocketServer(adapter=...)``, or by ``asok serve --gevent --workers N``
(asok_green.cluster.settings).
Each serving process is a *node* with a random id.

Broadcasts: the hub delivers to its own clients first, then hands the message
to :meth:`RedisCluster.publish`, which only queues it (asok_green.cluster.outbox).
One publisher greenlet per node sends the queue to Redis in pipelined batches, as Asok's
``RedisWebSocketAdapter`` envelopes ``{"target", "name", "msg", "node_id"}`` on
``asok:ws:path:<path>`` and ``asok:ws:room:<room>``. Every node subscribes to
those channels and delivers what other nodes (ours or Asok's) published to its
own clients, so each client gets a message exactly once.

Presence (asok_green.cluster.presence): a node keeps its users and its (room,
user) pairs in Redis sets kept alive by its heartbeat, and announces each change
on the channel ``asok:ws:presence``, so every node knows what
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
Under Sentinel (``redis+sentinel://``, asok_green.cluster.redis_url) "back" is
the new primary: every connection made after a failure asks the sentinels
where the primary is, and one that finds the old primary demoted (``READONLY``)
fails like an outage, so the node reconnects to the promoted replica.

Nothing here yields while it changes the hub's state: Redis I/O happens only in
this module's own greenlets, and their updates to shared state happen after a
reply has been read, between two yields.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from ..core.node import ClusterConfigError
from ..protocol.outgoing import Outgoing
from .outbox import Outbox
from .presence import Presence, heartbeat_interval
from .redis_url import close_client, redact, redis_client, sentinel_primary
from .settings import (
    DEFAULT_PREFIX,
    DEFAULT_PRESENCE_TTL,
    DEFAULT_REDIS_URL,
    WORKERS_ENV,
    ClusterSettings,
    resolve_settings,
    worker_count,
)

if TYPE_CHECKING:
    from ..server.hub import Hub

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_PRESENCE_TTL",
    "DEFAULT_REDIS_URL",
    "WORKERS_ENV",
    "ClusterConfigError",
    "ClusterSettings",
    "RedisCluster",
    "join",
    "resolve_settings",
    "worker_count",
]

logger = logging.getLogger("asok_green.cluster")

_STOP_TIMEOUT = 1.0
_FIRST_CONNECT_WAIT = 3.0


def join(hub: Hub) -> RedisCluster | None:
    """A started :class:`RedisCluster` for ``hub`` if its settings ask for one, else None."""
    settings = resolve_settings(hub)
    if settings is None:
        return None
    cluster = RedisCluster(hub, settings)
    cluster.start()
    return cluster


class RedisCluster:
    """One node of a cluster of servers sharing broadcasts and presence through Redis.

    The hub calls :meth:`publish` after delivering a broadcast locally and
    :meth:`local_changes` after each change of its own presence; both return at
    once. What the other nodes hold goes to the hub's state, which answers
    ``get_online_users`` and ``get_room_users`` without a round trip.
    """

    distributed = True

    def __init__(self, hub: Hub, settings: ClusterSettings):
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
        #: What a failed Redis call raises (an outage or an error reply).
        self.redis_errors = (redis.RedisError, OSError)
        # No retries inside redis-py: this module's own loop reconnects, so an outage shows at once.
        self._redis = redis_client(
            settings.url,
            socket_connect_timeout=2,
            socket_timeout=max(2.0, min(5.0, self.ttl)),
            retry=Retry(NoBackoff(), 0),
        )
        prefix = settings.prefix
        self._path_pattern = f"{prefix}:path:*"
        self._room_pattern = f"{prefix}:room:*"
        #: Where the history store (asok_green.history.redis_store) publishes each stream message with its offset.
        self.history_channel = f"{prefix}:history"
        self._history_channel_bytes = self.history_channel.encode()
        self._history: Any = None
        self._wake = Event()
        self._outbox = Outbox(prefix, self.node_id)
        self._presence = Presence(hub, self._redis, prefix, self.node_id, self.ttl, self._wake.set)
        self._ready = Event()
        #: The primary the subscription is on (Sentinel only): a failover elsewhere is noticed.
        self._primary: tuple[str, int] | None = None
        #: Counts the subscriptions made: a failure is only an outage for the link it was made on.
        self._link = 0
        self._outage_logged = False
        self._stopped = False
        self._greenlets: list[gevent.Greenlet] = []

    @property
    def redis(self) -> Any:
        """The redis-py client of this node (its settings and connection pool), for the history store."""
        return self._redis

    @property
    def address(self) -> str:
        """Where this node's Redis is, as the logs say it (the URL, its passwords hidden)."""
        return redact(self.settings.url)

    @property
    def backlog(self) -> int:
        """Broadcasts queued for the other nodes and not published yet."""
        return len(self._outbox)

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
            with gevent.Timeout(timeout, False):
                try:
                    while self._outbox:
                        self._send_batch()
                    pipe = self._redis.pipeline(transaction=True)
                    self._presence.leave(pipe)
                    pipe.execute()
                except self.redis_errors as exc:
                    logger.info("could not leave the cluster cleanly: %s", exc)
        self.connected = False
        gevent.killall(self._greenlets, block=True, timeout=timeout)
        close_client(self._redis)

    # -- what the hub calls (never yields) -----------------------------------------

    def publish(self, target: str, name: str, message: Outgoing) -> None:
        """Queue a broadcast, already delivered here, for the other nodes (``target``: as :meth:`Node.publish`)."""
        if not self.connected or not self._outbox.add(target, name, message):
            self.hub.stats["cluster_dropped"] += 1
            return
        self._wake.set()

    def local_changes(self, changes: list[Any]) -> None:
        """Queue the changes of this node's holding (users, users in rooms) for the other nodes."""
        if not self._stopped and self._presence.note(changes):
            self._wake.set()

    # -- Redis I/O (this module's greenlets only) -------------------------------------

    def _outage(self, exc: BaseException, link: int | None = None) -> None:
        # A call made on an earlier link (a primary left since, whose reply timed out late)
        # says nothing of the present one.
        if self._stopped or (link is not None and link != self._link):
            return
        self.connected = False
        if not self._outage_logged:
            self._outage_logged = True
            logger.error(
                "Redis at %s unreachable (%s): serving this node's clients only until it is back",
                self.address,
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
                if not isinstance(exc, self.redis_errors):
                    logger.exception("cluster subscriber failed: reconnecting")
                self._outage(exc)
            finally:
                self._ready.set()
                try:
                    pubsub.close()
                except self.redis_errors:
                    pass
            gevent.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _connect(self, pubsub: Any) -> None:
        # Under Sentinel: connections the pool kept to a primary no longer named are dropped
        # first, or the subscription (and the writes) would reuse one.
        sentinel_primary(self._redis)
        if self._history is not None:
            self._history.subscribing()
        pubsub.psubscribe(self._path_pattern, self._room_pattern)
        pubsub.subscribe(self._presence.channel, self.history_channel)
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
        self._primary = self._address_of(pubsub)
        self._link += 1
        # Subscribed first, so nothing published from now on is missed; then read who the
        # others hold, and have the publisher say who we hold.
        self._presence.read_others()
        self._presence.must_register = True
        self.connected = True
        if self._outage_logged:
            logger.warning(
                "Redis at %s is back: resubscribed and presence republished",
                self.address,
                extra={"event": "redis_back", "node": self.node_id},
            )
        else:
            logger.info(
                "node %s joined the cluster on Redis at %s",
                self.node_id,
                self.address,
                extra={"event": "cluster_joined", "node": self.node_id},
            )
        self._outage_logged = False
        if self._history is not None:
            self._history.subscribed()
        self._ready.set()
        self._wake.set()

    def _address_of(self, pubsub: Any) -> tuple[str, int] | None:
        """The primary ``pubsub`` listens to, under Sentinel (None on a plain URL)."""
        if not hasattr(self._redis.connection_pool, "get_master_address") or pubsub.connection is None:
            return None
        return (pubsub.connection.host, pubsub.connection.port)

    def _check_primary(self) -> None:
        """Under Sentinel: raise a connection error if the sentinels now name another primary.

        A primary paused for less than the socket timeout answers again after the
        sentinels promoted its replica, and takes writes until they demote it: the
        node must not stay on it. When no sentinel answers, the node stays where it is.
        """
        if self._primary is None:
            return
        address = sentinel_primary(self._redis)
        if address is not None and address != self._primary:
            import redis

            raise redis.ConnectionError(f"the sentinels name a new primary, {address[0]}:{address[1]}")

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
            self._presence.on_event(envelope)
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
        elif target == "room" and envelope.get("signal") is True:
            self.hub.signal_room(name, Outgoing.of(msg), from_node=True)
        elif target == "room":
            self.hub.broadcast_to(name, msg, from_adapter=True)

    def _run_publisher(self) -> None:
        presence = self._presence
        while True:
            self._wake.wait()
            self._wake.clear()
            if not self.connected:
                continue
            link = self._link
            try:
                if presence.must_register:
                    presence.register()
                while self.connected and (self._outbox or presence.pending):
                    if presence.must_register:
                        presence.register()
                    self._send_batch()
            except Exception as exc:
                if not isinstance(exc, self.redis_errors):
                    logger.exception("cluster publisher failed: reconnecting")
                self._outage(exc, link)

    def _send_batch(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        # Presence first: a message sent after a join (or a leave) arrives after it, as it did here.
        self._presence.write_changes(pipe)
        sent = self._outbox.write_batch(pipe)
        if len(pipe):
            started = perf_counter()
            pipe.execute()
            self.hub.stats["cluster_published"] += sent
            if self.hub.metrics is not None:
                self.hub.metrics.publish_time.observe(perf_counter() - started)

    def _run_heartbeat(self) -> None:
        interval = heartbeat_interval(self.ttl)
        while not self._stopped:
            gevent.sleep(interval)
            if not self.connected:
                continue
            link = self._link
            try:
                self._check_primary()
                self._presence.heartbeat()
            except Exception as exc:
                if self._stopped:
                    return
                if isinstance(exc, self.redis_errors):
                    self._outage(exc, link)
                else:
                    logger.exception("cluster heartbeat failed: going on")
