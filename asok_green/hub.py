"""WebSocketServer: Asok's WebSocket API, served from gevent greenlets on the HTTP port.

The hub owns the shared state of every connection in the process: who is on
which path, who is in which room, and how many connections each user has open.
All greenlets share it without locks: only one greenlet runs at a time, and no
method here yields while it changes that state. Calls that may yield (user
handlers, the room authorizer, database lookups) happen before or after a change,
never in the middle of one.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import gevent

from .connection import Connection, Outgoing
from .frames import OP_TEXT, encode_frame
from .limits import Limits, open_files_limit
from .routing import Route, RouteTable

logger = logging.getLogger("asok_green")

#: Every WebSocketServer made in this process, in creation order.
_INSTANCES: list[WebSocketServer] = []

_ROOM_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
_MAX_ROOM_NAME = 200
_DEFAULT_WS_PORT = 8001


def is_valid_room_name(room: object) -> bool:
    """Room names are 1-200 characters of letters, digits and ``._:-``."""
    return isinstance(room, str) and 0 < len(room) <= _MAX_ROOM_NAME and all(c in _ROOM_NAME_CHARS for c in room)


def _is_asok_app(app: Any) -> bool:
    return hasattr(app, "config") and hasattr(app, "_session_store")


def _text_frame(obj: Any) -> bytes:
    return encode_frame(OP_TEXT, json.dumps(obj).encode("utf-8"))


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
        self.stats: Counter = Counter()
        self._allowed_origins = allowed_origins
        self._limit_overrides = dict(limits)
        if max_connections is not None:
            self._limit_overrides["max_connections"] = max_connections
        self.limits = Limits.resolve(self._limit_overrides)
        self._origins = None
        self._auth = None
        self._room_authorizer: Callable | None = None
        self._by_path: dict[str, dict[Connection, None]] = {}
        self._rooms: dict[str, dict[Connection, None]] = {}
        self._room_users: dict[str, dict[Any, int]] = {}
        self._presence: dict[Any, int] = {}
        self._count = 0
        self._jobs: list[gevent.Greenlet] = []
        #: The node of a Redis cluster this server belongs to (asok_green.cluster), or None.
        self.cluster = None
        self.serving_port: int | None = None
        if app is not None:
            self.bind_app(app)
        _INSTANCES.append(self)

    # -- registration (the doc's decorators) --------------------------------

    def on(self, path: str) -> Callable:
        """Register the handler of text and binary messages on ``path``: ``fn(conn, message)``."""
        return self._register_handler(path, "on_message")

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
        """Use ``app`` for config, the session cookie and Asok's ``/asok/live`` operators."""
        from . import ops

        if self.app is app:
            return
        self.app = app
        self._origins = None
        self._auth = None
        self._release_db = None
        if not _is_asok_app(app):
            return
        from asok.orm import close_all_db_connections

        self._release_db = close_all_db_connections
        if "/asok/live" not in self.routes:
            self.on("/asok/live")(ops.on_live_message)
            ops.install_model_relay(self)

    def attach(self, app: Any, port: int) -> None:
        """Called once by the serving process: bind the app and check the configuration.

        Raises :class:`asok_green.origins.InsecureOriginPolicy` when ``"*"`` is
        allowed with DEBUG off.
        """
        if self.app is None and app is not None:
            self.bind_app(app)
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
        # Built now, so a policy refused for production fails at start-up, not at the first client.
        logger.info("%s", self.origins.describe())
        self._start_background_jobs()
        if self.cluster is None:
            from . import cluster

            self.cluster = cluster.join(self)

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
            from .origins import OriginPolicy

            config = getattr(self.app, "config", None)
            local_ports = [p for p in (self.serving_port, os.environ.get("ASOK_PORT")) if p]
            self._origins = OriginPolicy.from_settings(self._allowed_origins, config=config, local_ports=local_ports)
        return self._origins

    @property
    def auth(self):
        """Resolves the Asok session cookie of a handshake to ``(user, session)``."""
        if self._auth is None:
            from .auth import SessionAuth

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
        if self.cluster is not None:
            self.cluster.stop()

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
        """False when the process already holds ``max_connections`` WebSockets."""
        return self._count < self.limits.max_connections

    def register(self, conn: Connection) -> None:
        """Make ``conn`` reachable by broadcasts; announce its user if first online."""
        self._by_path.setdefault(conn.path, {})[conn] = None
        self._count += 1
        self.stats["connections_opened"] += 1
        user_id = getattr(conn.user, "id", None)
        if user_id is not None:
            count = self._presence.get(user_id, 0)
            self._presence[user_id] = count + 1
            if count == 0:
                self._presence_changed(user_id, "online")

    def unregister(self, conn: Connection) -> None:
        """Forget ``conn`` everywhere; announce its user offline if this was the last tab."""
        members = self._by_path.get(conn.path)
        if members is None or conn not in members:
            return
        del members[conn]
        if not members:
            del self._by_path[conn.path]
        # Closing counts as leaving every room; conn.rooms stays readable for on_disconnect.
        left = [room for room in conn._room_set or () if self._discard_member(room, conn)]
        for room in left:
            self._announce_room_presence(room, conn.user.id, "left")
        self._count -= 1
        user_id = getattr(conn.user, "id", None)
        if user_id is not None:
            count = self._presence.get(user_id, 0) - 1
            if count > 0:
                self._presence[user_id] = count
            else:
                self._presence.pop(user_id, None)
                self._presence_changed(user_id, "offline")

    def _presence_changed(self, user_id: Any, status: str) -> None:
        """A user's first local connection opened or their last one closed."""
        if self.cluster is None:
            self._broadcast_presence(user_id, status)
        else:
            # Online or offline is the cluster's call: the user may have tabs on other nodes.
            self.cluster.local_presence(user_id, status == "online")

    def _broadcast_presence(self, user_id: Any, status: str) -> None:
        frame = _text_frame({"op": "broadcast", "type": "presence", "user_id": user_id, "status": status})
        for conn in self.connections():
            conn.send_frame(frame)

    # -- rooms -------------------------------------------------------------------

    def join_room(self, conn: Connection, room: str) -> bool:
        """Add ``conn`` to ``room`` if the name is valid and the authorizer agrees.

        A user's first connection in the room is announced to the room as
        ``room_presence`` ``joined``; joining a room twice changes nothing.
        """
        if not is_valid_room_name(room) or not self.check_room_authorization(conn, room):
            return False
        # The authorizer may have yielded: the connection may be gone by now.
        if conn.closed or conn not in self._by_path.get(conn.path, ()):
            return False
        members = self._rooms.setdefault(room, {})
        if conn in members:
            return True
        members[conn] = None
        conn._rooms.add(room)
        user_id = getattr(conn.user, "id", None)
        if user_id is not None:
            counts = self._room_users.setdefault(room, {})
            counts[user_id] = counts.get(user_id, 0) + 1
            if counts[user_id] == 1:
                self._announce_room_presence(room, user_id, "joined")
        return True

    def leave_room(self, conn: Connection, room: str) -> None:
        """Remove ``conn`` from ``room``; the user's last connection there is announced as ``left``."""
        members = self._rooms.get(room)
        if members is None or conn not in members:
            return
        conn._rooms.discard(room)
        if self._discard_member(room, conn):
            self._announce_room_presence(room, conn.user.id, "left")

    def _discard_member(self, room: str, conn: Connection) -> bool:
        """Take ``conn`` out of ``room``; True if it was its user's last connection there."""
        members = self._rooms.get(room)
        if members is None or conn not in members:
            return False
        del members[conn]
        if not members:
            del self._rooms[room]
        user_id = getattr(conn.user, "id", None)
        counts = self._room_users.get(room)
        if user_id is None or counts is None or user_id not in counts:
            return False
        if counts[user_id] > 1:
            counts[user_id] -= 1
            return False
        del counts[user_id]
        if not counts:
            del self._room_users[room]
        return True

    def _announce_room_presence(self, room: str, user_id: Any, status: str) -> None:
        message = {"op": "broadcast", "type": "room_presence", "room": room, "user_id": user_id, "status": status}
        self.broadcast_to_json(room, message)

    def get_room_users(self, room: str) -> list:
        """The ids of users with at least one connection in ``room`` (an asok_green extension)."""
        return list(self._room_users.get(room, ()))

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
        """The connections that have joined ``room``."""
        return list(self._rooms.get(room, ()))

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
        members = self._by_path.get(name, ()) if target == "path" else self._rooms.get(name, ())
        delivered = self._fan_out(members, message, exclude)
        if self.cluster is not None and not from_adapter:
            # Only queued: the cluster's publisher greenlet does the Redis I/O.
            self.cluster.publish(target, name, message)
        return delivered

    @staticmethod
    def _fan_out(members: Iterable[Connection], message: Outgoing | bytes, exclude: Connection | None) -> int:
        """Hand ``message`` to each member but ``exclude``; returns how many took it.

        ``message`` is an :class:`Outgoing` (compressed once for the members
        that negotiated permessage-deflate) or a frame to send as it is.
        """
        delivered = 0
        if isinstance(message, Outgoing):
            frame = message.frame
            # A snapshot: a failed send may end a connection while we iterate.
            for conn in tuple(members):
                if conn is not exclude:
                    deflate = conn.deflate
                    if conn.send_frame(frame if deflate is None else message.frame_for(deflate)):
                        delivered += 1
            return delivered
        for conn in tuple(members):
            if conn is not exclude and conn.send_frame(message):
                delivered += 1
        return delivered

    # -- introspection -----------------------------------------------------------

    def connections(self, path: str | None = None) -> list[Connection]:
        """The open connections, on ``path`` or on every path."""
        if path is not None:
            return list(self._by_path.get(path, ()))
        return [conn for members in self._by_path.values() for conn in members]

    def get_online_users(self) -> list:
        """The ids of users with at least one open connection (on any node of a cluster)."""
        if self.cluster is not None:
            return self.cluster.online_users()
        return list(self._presence)

    def is_user_online(self, user_id: Any) -> bool:
        """True if ``user_id`` has at least one open connection (on any node of a cluster)."""
        if self.cluster is not None:
            return self.cluster.is_online(user_id)
        return self._presence.get(user_id, 0) > 0

    @property
    def connection_count(self) -> int:
        """How many WebSockets this server holds now."""
        return self._count

    @classmethod
    def instances(cls) -> list[WebSocketServer]:
        """Every WebSocketServer created in this process, oldest first."""
        return list(_INSTANCES)

    def __repr__(self) -> str:
        return f"<asok_green.WebSocketServer routes={[r.pattern for r in self.routes]} connections={self._count}>"
