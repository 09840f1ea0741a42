"""The hub: the shared state of every connection in the process, applied and announced, and the fan-out.

The hub owns the shared state of every connection in the process (who is on
which path, who is in which room, who is online here and on the other nodes),
held in one :class:`asok_green.core.state.HubState`. All greenlets share it without
locks: only one greenlet runs at a time, and each change is one pure transition
applied whole. Then, and only then, the hub announces what the transition
returned (presence frames to clients, changes to the cluster), since sending can
close other connections and re-enter the hub. Calls that may yield (user
handlers, the room authorizer, database lookups) happen before a transition or
after its announcements, never in the middle.

What lies beyond the process is given to the hub, never imported by it: its
node (:class:`asok_green.core.node.Node`: the cluster, or this process alone)
and the streams that keep history (:class:`asok_green.core.interfaces.StreamHistory`).
Asok's API on top of it (the decorators, the app, the background jobs) is
:class:`asok_green.api.websocket_server.WebSocketServer`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

import gevent
from gevent.monkey import get_original

from ..core import state as st
from ..core.interfaces import StreamHistory
from ..core.limits import Limits
from ..core.node import SINGLE_PROCESS, Node
from ..core.routing import Route, RouteTable
from ..core.timing import HandlerTimes
from ..protocol.frames import OP_TEXT
from ..protocol.outgoing import Outgoing
from .connection import Connection

logger = logging.getLogger("asok_green")
_native_thread_id = get_original("_thread", "get_ident")

#: Every hub made in this process, in creation order.
_INSTANCES: list[Hub] = []

_ROOM_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
_MAX_ROOM_NAME = 200


def is_valid_room_name(room: object) -> bool:
    """Room names are 1-200 characters of letters, digits and ``._:-``."""
    return isinstance(room, str) and 0 < len(room) <= _MAX_ROOM_NAME and all(c in _ROOM_NAME_CHARS for c in room)


class Hub:
    """The connections of one WebSocket server in this process: their state, their rooms, their broadcasts.

    Changes go through :class:`asok_green.core.state.HubState` transitions and are
    announced after they are applied (:meth:`register`, :meth:`unregister`,
    :meth:`join_room`, :meth:`leave_room`, the ``node_*`` reports of the
    cluster); broadcasts are encoded once and fanned out (:meth:`fan_out`).
    Whoever configures the hub sets :attr:`app`, :attr:`origins`, :attr:`auth`,
    :attr:`node` and :attr:`history`; :class:`asok_green.api.websocket_server.WebSocketServer` does.
    """

    #: The app served beside the hub (its config holds the ``WS_*`` settings), or None.
    app: Any = None
    #: The Asok cluster adapter the hub was given (``WebSocketServer(adapter=...)``), or None.
    adapter: Any = None
    #: The Origin policy handshakes are checked against (asok_green.core.origins.OriginPolicy).
    origins: Any
    #: What resolves a handshake's session cookie to ``(user, session)`` (asok_green.bridge.auth.SessionAuth).
    auth: Any

    def __init__(self, limits: Limits) -> None:
        """An empty hub obeying ``limits``, on its own (no cluster, no history)."""
        self.limits = limits
        self.routes = RouteTable()
        #: ``fn(conn, room) -> bool`` deciding who may join which room, or None (``model:`` rooms only).
        self.authorizer: Callable[[Any, str], Any] | None = None
        #: What releases what a handler left open in its greenlet (Asok's database connections), or None.
        self.release_after_handler: Callable[[], None] | None = None
        self.stats: Counter = Counter()
        #: Calls of, and seconds spent in, each handler function (wall time, monotonic clock),
        #: counted once per call; the dashboard and the metrics both read it.
        self.handler_times = HandlerTimes()
        #: Connections, rooms and presence (asok_green.core.state): changed only by its transitions.
        self.state = st.HubState()
        #: Where broadcasts and presence changes go beyond this process: the Redis cluster
        #: this server belongs to (asok_green.cluster.redis_node), or the single-process node.
        self.node: Node = SINGLE_PROCESS
        #: Timings kept while metrics are on (asok_green.ops.metrics.HubMetrics), else None.
        self.metrics: Any = None
        #: Connections holding frames of this loop turn's broadcasts back (see fan_out), or None.
        self._corked: list[Connection] | None = None
        #: The OS thread of the event loop serving this hub (set by attach): only there are broadcasts held.
        self._loop_thread: int | None = None
        #: The streams that keep history (asok_green.history.streams.History), None until one does.
        self.history: StreamHistory | None = None
        _INSTANCES.append(self)

    @classmethod
    def instances(cls) -> list:
        """Every hub of this class created in this process, oldest first."""
        return [hub for hub in _INSTANCES if isinstance(hub, cls)]

    def attach(self, app: Any, port: int) -> None:
        """Called once by the serving process, in the thread of its event loop, with the app and port it serves.

        From then on the broadcasts made in one turn of that loop are sent
        together at its end (see :meth:`fan_out`).
        """
        self._loop_thread = _native_thread_id()

    def stop(self) -> None:
        """Close every connection with 1001 (going away), then release the history and leave the cluster."""
        for conn in self.connections():
            conn.going_away()
        if self.history is not None:
            # Before the node: a store that writes through the cluster's Redis flushes first.
            self.history.stop()
        self.node.stop()

    @property
    def cluster(self) -> Any:
        """The Redis cluster node this server belongs to (asok_green.cluster.redis_node), or None."""
        return self.node if self.node.distributed else None

    def after_handler(self) -> None:
        """Release what a handler left open in this greenlet (Asok's per-greenlet DB connections).

        Asok closes its database connections at the end of each HTTP request; a
        WebSocket greenlet lives for hours, so the server does it after each
        handler call instead of holding one connection per client.
        """
        if self.release_after_handler is not None:
            self.release_after_handler()

    # -- what the serving process asks ----------------------------------------

    def match(self, path: str) -> tuple[Route | None, dict[str, str]]:
        """The route and its parameters for a request path, or ``(None, {})``."""
        return self.routes.match(path)

    def has_room_for_another(self) -> bool:
        """False when the process already holds (or is handshaking) ``max_connections`` WebSockets."""
        return self.state.taken() < self._capacity

    @property
    def _capacity(self) -> int:
        # 0 means "not set": the serving process sets it from the open-files limit in attach().
        return self.limits.max_connections or sys.maxsize

    def reserve_slot(self, token: Any) -> bool:
        """Hold a connection slot for a handshake in progress; False when every slot is taken.

        :meth:`register` with the same ``token`` uses the slot; :meth:`release_slot`
        gives it back if the handshake fails. Held slots count toward
        ``max_connections``, so the limit holds however many handshakes run at once.
        """
        return self.state.reserve(token, self._capacity)

    def release_slot(self, token: Any) -> None:
        """Give back the slot held under ``token`` (nothing if :meth:`register` used it)."""
        self.state.release(token)

    def register(self, conn: Connection, reservation: Any = None) -> bool:
        """Make ``conn`` reachable by broadcasts; announce its user if first online.

        Uses the slot held under ``reservation`` if there is one, else a free
        slot; False (and nothing registered) when none is left. A connection
        that speaks ``asok-green.v1`` on a path with history is then told its
        position, or given what it missed (this may yield).
        """
        try:
            changes = self.state.open(conn, conn.path, getattr(conn.user, "id", None), self._capacity, reservation)
        except st.AtCapacity:
            self.stats["refused_capacity"] += 1
            return False
        self.stats["connections_opened"] += 1
        self._announce(changes)
        if conn.speaks_v1 and self.history is not None:
            stream = self.history.path_stream(conn.path)
            since, conn.since = conn.since, None  # not kept for the connection's life
            if stream is not None:
                try:
                    self.history.attach(conn, stream, since)
                except BaseException:
                    # Killed while the replay was read: the caller sees an unregistered connection.
                    self.unregister(conn)
                    raise
        return True

    def unregister(self, conn: Connection) -> None:
        """Forget ``conn`` everywhere; announce its user offline if this was the last tab.

        Closing counts as leaving every room; ``conn.rooms`` stays readable for on_disconnect.
        The streams of the path and rooms it leaves empty here are let go.
        """
        self._announce(self.state.close(conn, conn.path, getattr(conn.user, "id", None)))
        if self.history is not None:
            self.history.closed(conn)

    def _announce(self, changes: list) -> None:
        """Say what a transition returned: to the cluster first (only queued), then to clients."""
        if not changes:
            return
        self.node.local_changes(changes)
        for change in changes:
            kind = type(change)
            if kind is st.RoomJoined:
                self._announce_room_presence(change.room, change.user_id, "joined")
            elif kind is st.RoomLeft:
                self._announce_room_presence(change.room, change.user_id, "left")
            elif kind is st.UserOnline:
                self._broadcast_presence(change.user_id, "online")
            elif kind is st.UserOffline:
                self._broadcast_presence(change.user_id, "offline")

    def _broadcast_presence(self, user_id: Any, status: str) -> None:
        presence = {"op": "broadcast", "type": "presence", "user_id": user_id, "status": status}
        message = Outgoing(OP_TEXT, json.dumps(presence).encode("utf-8"))
        self.fan_out(self.routes.presence_audience(self.state.by_path), message, None)

    def _announce_room_presence(self, room: str, user_id: Any, status: str) -> None:
        # This node's members only: every node announces a cluster-wide change to its own.
        message = {"op": "broadcast", "type": "room_presence", "room": room, "user_id": user_id, "status": status}
        self.fan_out(self.state.rooms.get(room, ()), Outgoing.json(message), None)

    # -- what the cluster reports about the other nodes ---------------------------

    def node_synced(self, node: str, users: Iterable[Any], room_users: Iterable[tuple[str, Any]]) -> None:
        """Remote ``node`` is live and holds exactly these users and (room, user) pairs."""
        self._announce(self.state.node_synced(node, users, room_users))

    def node_added(self, node: str, users: Iterable[Any] = (), room_users: Iterable[tuple[str, Any]] = ()) -> None:
        """Live remote ``node`` now also holds these; ignored for a node that is not live."""
        self._announce(self.state.node_added(node, users, room_users))

    def node_removed(self, node: str, users: Iterable[Any] = (), room_users: Iterable[tuple[str, Any]] = ()) -> None:
        """Live remote ``node`` no longer holds these; ignored for a node that is not live."""
        self._announce(self.state.node_removed(node, users, room_users))

    def node_down(self, node: str) -> None:
        """Remote ``node`` is gone: its users leave their rooms and go offline unless held elsewhere."""
        self._announce(self.state.node_down(node))

    # -- rooms -------------------------------------------------------------------

    def join_room(self, conn: Connection, room: str, since: Any = None) -> bool:
        """Add ``conn`` to ``room`` if the name is valid and the authorizer agrees.

        A user's first connection in the room (on any node) is announced to the
        room as ``room_presence`` ``joined``; joining a room twice changes nothing.
        A connection that speaks ``asok-green.v1`` joining a room with history
        is told the room stream's position, or, with ``since`` (an
        :class:`asok_green.protocol.envelopes.Since`), given what it missed (this may yield).
        """
        cap = self.limits.max_rooms_per_connection
        if not is_valid_room_name(room) or self.state.at_room_cap(conn, room, cap):
            return False
        if not self.check_room_authorization(conn, room):
            return False
        # The authorizer may have yielded: the connection may be gone (or in more rooms) by now.
        if conn.closed or self.state.at_room_cap(conn, room, cap):
            return False
        changes = self.state.join(conn, conn.path, room, getattr(conn.user, "id", None))
        if changes is None:
            return False
        self._announce(changes)
        if conn.speaks_v1 and self.history is not None:
            stream = self.history.room_stream(room)
            if stream is not None:
                self.history.attach(conn, stream, since)
        return True

    def leave_room(self, conn: Connection, room: str) -> None:
        """Remove ``conn`` from ``room``; the user's last connection there (on any node) is announced as ``left``."""
        self._announce(self.state.leave(conn, room, getattr(conn.user, "id", None)))
        if self.history is not None:
            self.history.room_vacated(room)

    def get_room_users(self, room: str) -> list:
        """The ids of users with at least one connection in ``room``, on any node (an asok_green extension)."""
        return self.state.room_users(room)

    def check_room_authorization(self, conn: Connection, room: str) -> bool:
        """The room authorizer's verdict; without one, only ``model:`` rooms, as in Asok."""
        authorizer = self.authorizer
        if authorizer is None:
            return room.startswith("model:")
        try:
            return bool(authorizer(conn, room))
        except Exception:
            logger.exception("room authorizer failed for room %r (path %s): denied", room, conn.path)
            return False

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        """The rooms ``conn`` has joined (for a closed connection: those it was in when it closed)."""
        return self.state.rooms_of(conn)

    # -- broadcasting (the frame is encoded once, whatever the audience) ----

    def broadcast(
        self, path: str, message: str | bytes, exclude: Connection | None = None, from_adapter: bool = False
    ) -> int:
        """Send ``message`` to every connection on ``path``; returns how many got it in this process.

        In a cluster the other nodes deliver it to theirs; ``from_adapter=True``
        (as in Asok) delivers it in this process only.
        """
        return self._send("path", path, Outgoing.of(message), exclude, from_adapter)

    def broadcast_json(self, path: str, obj: Any, exclude: Connection | None = None) -> int:
        """Send ``obj`` as JSON to every connection on ``path``."""
        return self._send("path", path, Outgoing.json(obj), exclude)

    def broadcast_to(
        self, room: str, message: str | bytes, exclude: Connection | None = None, from_adapter: bool = False
    ) -> int:
        """Send ``message`` to every connection that has joined ``room`` (on every node of a cluster)."""
        return self._send("room", room, Outgoing.of(message), exclude, from_adapter)

    def broadcast_to_json(self, room: str, obj: Any, exclude: Connection | None = None) -> int:
        """Send ``obj`` as JSON to every connection that has joined ``room``."""
        return self._send("room", room, Outgoing.json(obj), exclude)

    def signal_room(self, room: str, message: Outgoing, exclude: Connection | None = None, from_node=False) -> int:
        """Send a signal (typing, a receipt) to ``room``'s members, never into a history; ``from_node``: here only."""
        delivered = self.fan_out(self.state.rooms.get(room, ()), message, exclude)
        if not from_node:
            self.node.publish("signal", room, message)
        return delivered

    def _send(
        self, target: str, name: str, message: Outgoing, exclude: Connection | None, from_adapter: bool = False
    ) -> int:
        history = self.history
        # A broadcast handed back by the cluster reached every node at once: with a store that
        # the nodes share, each would append it again. It is delivered live only (no offset).
        if history is not None and not (from_adapter and history.distributes):
            stream = history.path_stream(name) if target == "path" else history.room_stream(name)
            if stream is not None:
                delivered = history.publish(stream, message, exclude)
                if not from_adapter and not history.distributes:
                    self.node.publish(target, name, message)
                return delivered
        state = self.state
        members = state.by_path.get(name, ()) if target == "path" else state.rooms.get(name, ())
        delivered = self.fan_out(members, message, exclude)
        if not from_adapter:
            # Only queued: a cluster's publisher greenlet does the Redis I/O.
            self.node.publish(target, name, message)
        return delivered

    def fan_out(
        self,
        members: Iterable[Connection],
        message: Outgoing | bytes,
        exclude: Connection | None,
        held: dict | None = None,
        v1: bool | None = None,
    ) -> int:
        """Hand ``message`` to each member but ``exclude``; returns how many took it.

        ``message`` is an :class:`Outgoing` (compressed once for the members
        that negotiated permessage-deflate, wrapped once for those that speak
        ``asok-green.v1``) or a frame to send as it is. Members in ``held``
        (connections whose replay is being read) get it added to their list
        instead. ``v1`` True or False: only the members that speak
        ``asok-green.v1``, or only those that do not.
        """
        metrics = self.metrics
        started = perf_counter() if metrics is not None else 0.0
        delivered = size = 0
        corked = self._corked
        if corked is None and self._loop_thread == _native_thread_id():
            # The first broadcast of a loop turn goes straight out; those after it in
            # the same turn are held and sent together at its end (one send per client).
            self._corked = []
            gevent.get_hub().loop.run_callback(self._uncork)
        if isinstance(message, Outgoing):
            frame = message.frame
            # A snapshot: a failed send may end a connection while we iterate.
            for conn in tuple(members):
                if conn is not exclude:
                    if v1 is not None and conn.speaks_v1 is not v1:
                        continue
                    if held and conn in held:
                        held[conn].append(message)
                        continue
                    deflate = conn.deflate
                    if conn.speaks_v1:
                        sent = message.v1_frame_for(deflate)
                    else:
                        sent = frame if deflate is None else message.frame_for(deflate)
                    if conn.send_frame(sent) if corked is None else conn.cork_frame(sent, corked):
                        delivered += 1
                        size += len(sent)
        else:
            for conn in tuple(members):
                if conn is not exclude and (
                    conn.send_frame(message) if corked is None else conn.cork_frame(message, corked)
                ):
                    delivered += 1
            size = delivered * len(message)
        stats = self.stats
        stats["messages_sent"] += delivered
        stats["bytes_sent"] += size
        if metrics is not None:
            metrics.fanout_time.observe(perf_counter() - started)
        return delivered

    def _uncork(self) -> None:
        """At the end of a loop turn: send what the turn's later broadcasts held back."""
        corked, self._corked = self._corked, None
        for conn in corked or ():
            try:
                conn.uncork()
            except Exception:
                logger.exception("sending the held broadcasts to %s on %s failed", conn.addr, conn.path)
                conn.abort()

    def deliver_stream(self, stream: str, epoch: str, offset: int, opcode: int, data: bytes) -> int:
        """Deliver message ``offset`` of ``stream`` (``/path`` or ``room:name``), published by another process.

        Delivered here with the offset it carries, to plain and v1 members
        alike, after any message of the stream still missing here (read from
        the store). Returns how many connections got it. Needs the hub's
        history (:class:`asok_green.api.websocket_server.WebSocketServer` makes
        one if there is none yet).
        """
        history = self.history
        return history.deliver(history.stream_named(stream), epoch, offset, Outgoing(opcode, data), None)

    # -- introspection -----------------------------------------------------------

    def connections(self, path: str | None = None) -> list[Connection]:
        """The open connections, on ``path`` or on every path."""
        return self.state.connections(path)

    def get_online_users(self) -> list:
        """The ids of users with at least one open connection (on any node of a cluster)."""
        return self.state.online_users()

    def is_user_online(self, user_id: Any) -> bool:
        """True if ``user_id`` has at least one open connection (on any node of a cluster)."""
        return self.state.is_online(user_id)

    @property
    def connection_count(self) -> int:
        """How many WebSockets this server holds now."""
        return self.state.count
