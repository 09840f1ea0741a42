"""WebSocketServer: Asok's WebSocket API, served from gevent greenlets on the HTTP port.

The facade Asok users write against (``WebSocketServer(port=8001, app=app)``,
``@ws.on``, ``ws.broadcast``...), built on :class:`asok_green.server.hub.Hub`:
the hub keeps the connections, rooms and presence and fans broadcasts out;
this class adds the doc's decorators, binds the app (Asok's live operators
and GraphQL), and when the process serves it starts the background jobs,
joins the cluster and opens the history.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import gevent

from ..core.limits import Limits, open_files_limit
from ..core.node import SINGLE_PROCESS
from ..server.connection import Connection
from ..server.hub import Hub

logger = logging.getLogger("asok_green")

_DEFAULT_WS_PORT = 8001


def db_releaser() -> Callable[[], None]:
    """What releases Asok's database connections after a handler: a look per engine, a close only if one is open."""
    from ..bridge.dbrelease import db_releaser as asok_db_releaser

    return asok_db_releaser()


def _is_asok_app(app: Any) -> bool:
    from ..bridge.asok_api import is_asok_app

    return is_asok_app(app)


class WebSocketServer(Hub):
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
        self._allowed_origins = allowed_origins
        self._limit_overrides = dict(limits)
        if max_connections is not None:
            self._limit_overrides["max_connections"] = max_connections
        super().__init__(Limits.resolve(self._limit_overrides))
        self.host = host
        self.port = port
        self.secret_key = secret_key
        self.auth_model = auth_model
        self.adapter = adapter
        self.app = None
        self._origins = None
        self._auth = None
        self._jobs: list[gevent.Greenlet] = []
        self.serving_port: int | None = None
        if app is not None:
            self.bind_app(app)

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
            self.routes.speak(path, subprotocols)
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
        self._keep_streams().keep(pattern, size, ttl)

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
        self.authorizer = fn
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
        self.release_after_handler = None
        if not _is_asok_app(app):
            return
        self.release_after_handler = db_releaser()
        asok_framework.install()
        if "/asok/live" not in self.routes:
            self.on("/asok/live")(ops.on_live_message)
            ops.install_model_relay(self)
            ops.limit_asok_lines(self)
        graphql.install(self)

    def attach(self, app: Any, port: int) -> None:
        """Called once by the serving process: bind the app and check the configuration.

        Raises :class:`asok_green.core.origins.InsecureOriginPolicy` when ``"*"`` is
        allowed with DEBUG off.
        """
        if self.app is None and app is not None:
            self.bind_app(app)
        super().attach(app, port)
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

    def _start_background_jobs(self) -> None:
        from ..server import keepalive, revocation

        if self._jobs:
            return
        if self.limits.ping_interval > 0:
            self._jobs.append(gevent.spawn(keepalive.run, self))
        if self.limits.session_check_interval > 0 and _is_asok_app(self.app):
            self._jobs.append(gevent.spawn(revocation.run, self))

    def revoke_session(self, login_sid: str) -> int:
        """Close (1008) every connection whose login is bound to ``login_sid``; returns how many."""
        from ..server import revocation

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
        super().stop()

    def deliver_stream(self, stream: str, epoch: str, offset: int, opcode: int, data: bytes) -> int:
        """As :meth:`Hub.deliver_stream`, with history kept from now on if none was yet."""
        self._keep_streams()
        return super().deliver_stream(stream, epoch, offset, opcode, data)

    def _keep_streams(self) -> Any:
        if self.history is None:
            from ..history.streams import History

            self.history = History(self)
        return self.history

    @classmethod
    def instances(cls) -> list[WebSocketServer]:
        """Every WebSocketServer created in this process, oldest first."""
        return super().instances()

    def __repr__(self) -> str:
        return f"<asok_green.WebSocketServer routes={[r.pattern for r in self.routes]} connections={self.state.count}>"
