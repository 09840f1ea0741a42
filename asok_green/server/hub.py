"""WebSocketServer: Asok's WebSocket API, served from gevent greenlets on the HTTP port.

The hub owns the shared state of every connection in the process (who is on
which path, who is in which room, who is online here and on the other nodes),
held in one :class:`asok_green.core.state.HubState`. All greenlets share it without
locks: only one greenlet runs at a time, and each change is one pure transition
applied whole. Then, and only then, the hub announces what the transition
returned (presence frames to clients, changes to the cluster), since sending can
close other connections and re-enter the hub. Calls that may yield (user
handlers, the room authorizer, database lookups) happen before a transition or
after its announcements, never in the middle.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

import gevent
from gevent.monkey import get_original

from ..core import state as st
from ..core.limits import Limits, open_files_limit
from ..core.node import SINGLE_PROCESS, Node
from ..core.routing import Route, RouteTable
from ..core.timing import HandlerTimes
from ..protocol.frames import OP_TEXT
from ..protocol.outgoing import Outgoing
from .connection import Connection

logger = logging.getLogger("asok_green")
_native_thread_id = get_original("_thread", "get_ident")

#: Every WebSocketServer made in this process, in creation order.
_INSTANCES: list[WebSocketServer] = []

_ROOM_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
_MAX_ROOM_NAME = 200
_DEFAULT_WS_PORT = 8001


def is_valid_room_name(room: object) -> bool:
    """Room names are 1-200 characters of letters, digits and ``._:-``."""
    return isinstance(room, str) and 0 < len(room) <= _MAX_ROOM_NAME and all(c in _ROOM_NAME_CHARS for c in room)


def db_releaser() -> Callable[[], None]:
    """What releases Asok's database connections after a handler: a look per engine, a close only if one is open."""
    from ..bridge.dbrelease import db_releaser as asok_db_releaser

    return asok_db_releaser()


def _is_asok_app(app: Any) -> bool:
    from ..bridge.asok_api import is_asok_app

    return is_asok_app(app)


class WebSocketServer:
    """The Asok ``WebSocketServer`` API, served on the same port as the app's pages.

    Create it exactly as Asok documents (``WebSocketServer(port=8001, app=app)``),
    register handlers with ``@ws.on``, ``@ws.on_connect`` and ``@ws.on_disconnect``,
    and serve it with ``asok serve --gevent`` or :func:`asok_green.serve`. The
    ``host`` and ``port`` arguments are accepted for compatibility and ignored:
    WebSockets share the HTTP server's port.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = _DEFAULT_WS_PORT,
        secret_key: str | None = None,
        auth_model: str = "User",
        allowed_origins: str | Iterable[str] | None = None,
        max_connections: int | None = None,
        app: Any = None,
        adapter: Any = None,
        **limits: Any,
    ):
        """Configure the server; nothing listens until the process serves it."""
        unknown = set(limits) - {f for f in Limits.__dataclass_fields__}
        if unknown:
            raise TypeError(f"unknown WebSocketServer option(s): {', '.join(sorted(unknown))}")
        self.host = host
        self.port = port
        self.secret_key = secret_key
        self.auth_model = auth_model
        self.adapter = adapter
        self.app = None
        self._release_db: Callable[[], None] | None = None
        self.routes = RouteTable()
        #: Paths of static routes that speak a subprotocol, and whether a dynamic one does
        #: (their connections get no presence frames).
        self._subprotocol_paths: set[str] = set()
        self._subprotocol_patterns = False
        self.stats: Counter = Counter()
        #: Calls of, and seconds spent in, each handler function (wall time, monotonic clock),
        #: counted once per call; the dashboard and the metrics both read it.
        self.handler_times = HandlerTimes()
        self._allowed_origins = allowed_origins
        self._limit_overrides = dict(limits)
        if max_connections is not None:
            self._limit_overrides["max_connections"] = max_connections
        self.limits = Limits.resolve(self._limit_overrides)
        self._origins = None
        self._auth = None
        self._room_authorizer: Callable | None = None
        #: Connections, rooms and presence (asok_green.core.state): changed only by its transitions.
        self.state = st.HubState()
        self._jobs: list[gevent.Greenlet] = []
        #: Where broadcasts and presence changes go beyond this process: the Redis cluster
        #: this server belongs to (asok_green.cluster.redis_node), or the single-process node.
        self.node: Node = SINGLE_PROCESS
        self.serving_port: int | None = None
        #: Timings kept while metrics are on (asok_green.ops.metrics.HubMetrics), else None.
        self.metrics: Any = None
        #: Connections holding frames of this loop turn's broadcasts back (see _fan_out), or None.
        self._corked: list[Connection] | None = None
        #: The OS thread of the event loop serving this hub (set by attach): only there are broadcasts held.
        self._loop_thread: int | None = None
        #: The streams that keep history (asok_green.history.streams), None until one does.
        self.history: Any = None
        if app is not None:
            self.bind_app(app)
        _INSTANCES.append(self)

    # -- registration (the doc's decorators) --------------------------------

    def on(self, path: str, subprotocols: Iterable[str] = (), history: int | None = None) -> Callable:
        """Register the handler of text and binary messages on ``path``: ``fn(conn, message)``.

        ``history`` (an asok_green extension) keeps the last ``history``
        broadcasts of each path of the route, as :meth:`keep_history` does.

        ``subprotocols`` (an asok_green extension) are the WebSocket
        subprotocols the route speaks: the handshake answer names the first
        one the client offers among them (``Sec-WebSocket-Protocol``). A
        client that offers none is served all the same. Connections on such a
        route get only what is sent to them or their path: no presence frames.
        """
        if subprotocols:
            route = self.routes.route(path)
            route.subprotocols = tuple(subprotocols)
            if route.is_dynamic:
                self._subprotocol_patterns = True
            else:
                self._subprotocol_paths.add("/" + "/".join(route.segments))
        if history:
            self.keep_history(path, size=history)
        return self._register_handler(path, "on_message")

    def keep_history(self, pattern: str, size: int = 200, ttl: float | None = None) -> None:
        """Keep the last ``size`` broadcasts (none older than ``ttl`` seconds) of a route's paths or of rooms.

        ``pattern`` is a route pattern (``/chat/[room]``: each path is its own
        stream) or a room glob (``room:*``, ``room:general``). Each broadcast
        gets the next offset of its stream; clients that speak
        ``asok-green.v1`` get it with its offset and can resume after a
        reconnect. Where the history is kept: ``WS_HISTORY_STORE``
        (``sqlite``, the default; ``memory``; ``redis``) and ``WS_HISTORY_PATH``.
        """
        if self.history is None:
            from ..history.streams import History

            self.history = History(self)
        self.history.keep(pattern, size, ttl)

    def on_connect(self, path: str) -> Callable:
        """Register the handler called when a client connects on ``path``: ``fn(conn)``."""
        return self._register_handler(path, "on_connect")

    def on_disconnect(self, path: str) -> Callable:
        """Register the handler called when a client on ``path`` is gone: ``fn(conn)``."""
        return self._register_handler(path, "on_disconnect")

    def _register_handler(self, path: str, slot: str) -> Callable:
        route = self.routes.route(path)

        def register(fn: Callable) -> Callable:
            setattr(route, slot, fn)
            return fn

        return register

    def room_authorizer(self, fn: Callable) -> Callable:
        """Register ``fn(conn, room) -> bool`` deciding who may join which room."""
        self._room_authorizer = fn
        return fn

    # -- wiring to the app and the serving process --------------------------

    def bind_app(self, app: Any) -> None:
        """Use ``app`` for config, the session cookie, Asok's ``/asok/live`` operators and ``/graphql``."""
        from ..bridge import asok_framework, graphql
        from ..bridge import live as ops

        if self.app is app:
            return
        self.app = app
        self._origins = None
        self._auth = None
        self._release_db = None
        if not _is_asok_app(app):
            return
        self._release_db = db_releaser()
        asok_framework.install()
        if "/asok/live" not in self.routes:
            self.on("/asok/live")(ops.on_live_message)
            ops.install_model_relay(self)
        graphql.install(self)

    def attach(self, app: Any, port: int) -> None:
        """Called once by the serving process: bind the app and check the configuration.

        Raises :class:`asok_green.core.origins.InsecureOriginPolicy` when ``"*"`` is
        allowed with DEBUG off.
        """
        if self.app is None and app is not None:
            self.bind_app(app)
        self._loop_thread = _native_thread_id()
        if self.port != port:
            logger.info(
                "WebSocketServer(port=%s) ignored: WebSockets are served on the HTTP port %s",
                self.port,
                port,
            )
        self.serving_port = port
        # Resolved with the app's config now: it may have been set after the constructor ran.
        self.limits = Limits.resolve(self._limit_overrides, getattr(self.app, "config", None))
        self.limits.max_connections = self.limits.connection_cap(open_files_limit())
        if self.secret_key is None and self.app is not None:
            config = getattr(self.app, "config", None) or {}
            self.secret_key = getattr(self.app, "secret_key", None) or config.get("SECRET_KEY")
        # Built now (again, with the serving port), so a policy refused for production
        # fails at start-up, not at the first client.
        self._origins = None
        logger.info("%s", self.origins.describe())
        self._start_background_jobs()
        if self.node is SINGLE_PROCESS:
            from ..cluster import adapters
            from ..cluster import redis_node as cluster

            # The cluster's settings first: they refuse an adapter= that is no adapter.
            self.node = cluster.join(self) or adapters.join(self) or SINGLE_PROCESS
        if self.history is not None:
            self.history.start()

    # -- attributes of Asok's WebSocketServer ------------------------------------

    @property
    def allowed_origins(self) -> str | list[str]:
        """The origins allowed to connect, as Asok's ``ws.allowed_origins``: ``"*"`` or a list.

        The list holds the configured origins and wildcard patterns, then
        localhost, 127.0.0.1 and [::1] on the allowed development ports. The
        page's own origin (Origin equal to ``Host``) is allowed too but cannot be
        listed. Setting it replaces the ``allowed_origins=`` argument; a server
        already serving applies it at once (``"*"`` with DEBUG off raises
        :class:`asok_green.core.origins.InsecureOriginPolicy`, as at start-up).
        """
        policy = self.origins
        if policy.any_local_port:
            return "*"
        local = [
            f"{scheme}://{host}{port}"
            for scheme in ("http", "https")
            for host in ("localhost", "127.0.0.1", "[::1]")
            for port in ("", *(f":{p}" for p in sorted(policy.local_ports)))
        ]
        return [*sorted(policy.exact), *policy.wildcards, *local]

    @allowed_origins.setter
    def allowed_origins(self, value: str | Iterable[str] | None) -> None:
        previous, previous_policy = self._allowed_origins, self._origins
        self._allowed_origins = value
        self._origins = None
        if self.serving_port is not None:
            try:
                self.origins  # noqa: B018 - built now, so a refused policy raises here
            except Exception:
                self._allowed_origins, self._origins = previous, previous_policy
                raise

    @property
    def max_connections(self) -> int:
        """The most WebSockets this process holds at once, as Asok's ``ws.max_connections``.

        ``max_connections=`` or ``WS_MAX_CONNECTIONS`` when given, capped by what
        the open-files limit allows; that limit alone otherwise. Setting it
        applies to the next handshake; open connections stay.
        """
        return self.limits.max_connections or self.limits.connection_cap(open_files_limit())

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        value = int(value)
        self._limit_overrides["max_connections"] = value
        self.limits.max_connections = value
        if self.serving_port is not None:
            self.limits.max_connections = self.limits.connection_cap(open_files_limit())

    @property
    def presence_counts(self) -> dict:
        """User id -> how many connections the user has open in this process, as Asok's ``ws.presence_counts``.

        A copy: presence changes only as connections open and close.
        """
        return dict(self.state.local_users)

    def on_live_message(self, conn: Connection, text: str | bytes) -> None:
        """Handle one ``/asok/live`` message, as Asok's ``ws.on_live_message`` does (a handler for ``@ws.on``)."""
        from ..bridge import live as ops

        ops.on_live_message(conn, text)

    @property
    def cluster(self) -> Any:
        """The Redis cluster node this server belongs to (asok_green.cluster.redis_node), or None."""
        return self.node if self.node.distributed else None

    def _start_background_jobs(self) -> None:
        from . import keepalive, revocation

        if self._jobs:
            return
        if self.limits.ping_interval > 0:
            self._jobs.append(gevent.spawn(keepalive.run, self))
        if self.limits.session_check_interval > 0 and _is_asok_app(self.app):
            self._jobs.append(gevent.spawn(revocation.run, self))

    def revoke_session(self, login_sid: str) -> int:
        """Close (1008) every connection whose login is bound to ``login_sid``; returns how many."""
        from . import revocation

        closed = revocation.close_all(c for c in self.connections() if c.login_sid == login_sid)
        self.stats["revoked"] += closed
        return closed

    @property
    def origins(self):
        """The Origin policy (built on first use from the constructor, env and app config)."""
        if self._origins is None:
            from ..core.origins import OriginPolicy

            config = getattr(self.app, "config", None)
            local_ports = [p for p in (self.serving_port, os.environ.get("ASOK_PORT")) if p]
            self._origins = OriginPolicy.from_settings(self._allowed_origins, config=config, local_ports=local_ports)
        return self._origins

    @property
    def auth(self):
        """Resolves the Asok session cookie of a handshake to ``(user, session)``."""
        if self._auth is None:
            from ..bridge.auth import SessionAuth

            self._auth = SessionAuth(self.app, auth_model=self.auth_model, secret_key=self.secret_key)
        return self._auth

    def start(self) -> WebSocketServer:
        """Return at once: the serving process (``asok serve --gevent``) serves this server."""
        return self

    def stop(self) -> None:
        """Stop the background jobs and close every connection with 1001 (going away)."""
        for job in self._jobs:
            job.kill(block=False)
        self._jobs.clear()
        for conn in self.connections():
            conn.going_away()
        if self.history is not None:
            # Before the node: a store that writes through the cluster's Redis flushes first.
            self.history.stop()
        self.node.stop()

    def after_handler(self) -> None:
        """Release what a handler left open in this greenlet (Asok's per-greenlet DB connections).

        Asok closes its database connections at the end of each HTTP request; a
        WebSocket greenlet lives for hours, so the server does it after each
        handler call instead of holding one connection per client.
        """
        if self._release_db is not None:
            self._release_db()

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
        """
        changes = self.state.close(conn, conn.path, getattr(conn.user, "id", None), conn._room_set or ())
        self._announce(changes)

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
        self._fan_out(self._presence_audience(), message, None)

    def _presence_audience(self) -> list[Connection]:
        """Every connection, but those on routes that speak a subprotocol of their own.

        A GraphQL client on ``/graphql`` (graphql-transport-ws) takes any other
        message for a protocol error and drops its subscriptions.
        """
        quiet, patterns = self._subprotocol_paths, self._subprotocol_patterns
        if not quiet and not patterns:
            return self.connections()
        match = self.routes.match
        audience = []
        for path, members in self.state.by_path.items():
            if path in quiet:
                continue
            if patterns:
                route = match(path)[0]
                if route is not None and route.subprotocols:
                    continue
            audience.extend(members)
        return audience

    def _announce_room_presence(self, room: str, user_id: Any, status: str) -> None:
        # This node's members only: every node announces a cluster-wide change to its own.
        message = {"op": "broadcast", "type": "room_presence", "room": room, "user_id": user_id, "status": status}
        self._fan_out(self.state.rooms.get(room, ()), Outgoing.json(message), None)

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
        if not is_valid_room_name(room) or not self.check_room_authorization(conn, room):
            return False
        # The authorizer may have yielded: the connection may be gone by now.
        if conn.closed:
            return False
        changes = self.state.join(conn, conn.path, room, getattr(conn.user, "id", None))
        if changes is None:
            return False
        conn._rooms.add(room)
        self._announce(changes)
        if conn.speaks_v1 and self.history is not None:
            stream = self.history.room_stream(room)
            if stream is not None:
                self.history.attach(conn, stream, since)
        return True

    def leave_room(self, conn: Connection, room: str) -> None:
        """Remove ``conn`` from ``room``; the user's last connection there (on any node) is announced as ``left``."""
        if conn._room_set is not None:
            conn._room_set.discard(room)
        self._announce(self.state.leave(conn, room, getattr(conn.user, "id", None)))

    def get_room_users(self, room: str) -> list:
        """The ids of users with at least one connection in ``room``, on any node (an asok_green extension)."""
        return self.state.room_users(room)

    def check_room_authorization(self, conn: Connection, room: str) -> bool:
        """The room authorizer's verdict; without one, only ``model:`` rooms, as in Asok."""
        if self._room_authorizer is None:
            return room.startswith("model:")
        try:
            return bool(self._room_authorizer(conn, room))
        except Exception:
            logger.exception("room authorizer failed for room %r (path %s): denied", room, conn.path)
            return False

    def room_members(self, room: str) -> list[Connection]:
        """The connections of this process that have joined ``room``."""
        return self.state.room_members(room)

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
        delivered = self._fan_out(members, message, exclude)
        if not from_adapter:
            # Only queued: a cluster's publisher greenlet does the Redis I/O.
            self.node.publish(target, name, message)
        return delivered

    def _fan_out(
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
        the store). Returns how many connections got it.
        """
        if self.history is None:
            from ..history.streams import History

            self.history = History(self)
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

    @classmethod
    def instances(cls) -> list[WebSocketServer]:
        """Every WebSocketServer created in this process, oldest first."""
        return list(_INSTANCES)

    def __repr__(self) -> str:
        return f"<asok_green.WebSocketServer routes={[r.pattern for r in self.routes]} connections={self.state.count}>"
