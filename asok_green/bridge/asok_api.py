"""Every Asok name asok_green uses, public or private: the one module that imports asok.

The rest of asok_green calls the functions here, each named for what it needs
(``session_store(app)``, ``model_room_allowed(conn, room)``,
``extend_page_step(...)``), and never names anything of Asok's own.
:data:`CONTRACT` lists each Asok name asok_green relies on, with the
parameters it is called with and what for; ``tests/test_asok_contract.py``
checks the installed Asok against that table, so a release that removes or
changes one fails there, by name, instead of at a user's first connection.
Using one more Asok name means adding its row.

asok is imported inside each function, never when this module is imported:
asok must be imported after gevent has patched the process.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["CONTRACT", "AsokName", "Page"]


class AsokName(NamedTuple):
    """One Asok name asok_green relies on: a row of :data:`CONTRACT`."""

    #: Dotted from the package (``asok.ws.live.on_live_message``). Past a class, the rest
    #: may be attributes Asok's code gives its instances at run time (``SessionStore._redis``).
    name: str
    #: The parameters asok_green calls it with, as ``inspect.signature`` names them (``self``
    #: included for a method reached through its class); None for a value, class or attribute.
    params: tuple[str, ...] | None
    #: What asok_green uses it for.
    purpose: str


_STORE = "asok.session.SessionStore"
_INJECTOR = "asok.core._asset_injector.AssetInjector"
_ENGINE = "asok.orm.engines.sqlite.SQLiteEngine"
_ADAPTER = "asok.ws.adapter.BaseWebSocketAdapter"

#: Every Asok name asok_green relies on (see :class:`AsokName`).
CONTRACT: tuple[AsokName, ...] = (
    # -- sessions and users: who is on the other end of a socket (bridge.auth) --
    AsokName("asok.Asok._session_store", None, "the app's session store, where handshakes look sessions up"),
    AsokName("asok.Asok._unsign", ("self", "signed_value"), "verifies the signed asok_session and asok_sid cookies"),
    AsokName(f"{_STORE}.load", ("self", "sid"), "reads a session's data"),
    AsokName(f"{_STORE}.save", ("self", "sid", "data"), "asok_green.testing logs a test in: stores its new session"),
    AsokName(f"{_STORE}.generate_sid", ("self",), "asok_green.testing logs a test in: the new session's id"),
    AsokName(f"{_STORE}.backend", None, "file stores are read off the loop; file and Redis 'no session' is confirmed"),
    AsokName(f"{_STORE}._session_file", ("self", "sid"), "only a missing file means 'no session' (not a failed read)"),
    AsokName(f"{_STORE}._redis_key", ("self", "sid"), "a session's Redis key"),
    AsokName(f"{_STORE}._redis", None, "the store's Redis client: EXISTS tells 'no session' from 'Redis is down'"),
    AsokName("asok.session.Session", ("args", "kwargs"), "conn.session, made from the session's data"),
    AsokName("asok.session.Session.sid", None, "the id of conn.session"),
    AsokName("asok.session.Session.modified", None, "conn.session starts unmodified"),
    AsokName("asok.orm.MODELS_REGISTRY", None, "the user model named by auth_model (User by default)"),
    AsokName("asok.orm.Model.find", ("kwargs",), "loads the logged-in user: find(id=user_id)"),
    # -- the drop-in: Asok's names give asok_green's classes (bridge.bootstrap) --
    AsokName("asok.WebSocketServer", None, "replaced: `from asok import WebSocketServer` gives asok_green's"),
    AsokName("asok.ws.WebSocketServer", None, "replaced by asok_green's WebSocketServer"),
    AsokName("asok.ws.server.WebSocketServer", None, "replaced by asok_green's WebSocketServer"),
    AsokName("asok.ws.Connection", None, "replaced by asok_green's Connection"),
    AsokName("asok.request.auth.AuthMixin.logout", ("self",), "wrapped: a logout closes its session's sockets at once"),
    AsokName("asok.request.Request.session", None, "the session a logout ends (its sid)"),
    # -- pages: the WebSocket script Asok adds to pages (bridge.bootstrap) --
    AsokName(f"{_INJECTOR}._resolve_ws_port", ("self",), "wrapped: pages connect to the port they came from"),
    AsokName(
        f"{_INJECTOR}._inject_alive", ("self",), "wrapped: ASOK_WS_PATH before Asok's script, resume client after"
    ),
    AsokName(f"{_INJECTOR}._needs_alive", ("self",), "whether a page is about to get Asok's WebSocket script"),
    AsokName(f"{_INJECTOR}._content_uses_components", ("self",), "wrapped: pages calling asokWS get the script too"),
    AsokName(f"{_INJECTOR}.app", None, "the app of a page (its WS_PATH)"),
    AsokName(f"{_INJECTOR}.content", None, "a page's HTML (does it call asokWS?)"),
    AsokName(f"{_INJECTOR}.nonce", None, "the CSP nonce of the scripts asok_green adds"),
    AsokName(f"{_INJECTOR}.request", None, "the request of a page"),
    AsokName(f"{_INJECTOR}.request._asok_pending_scripts", None, "where the scripts asok_green adds go"),
    AsokName("asok.request.Request.environ", None, "a page's WSGI environ (the port it was loaded from)"),
    # -- database connections left open by handlers (bridge.dbrelease, server.offload) --
    AsokName("asok.orm.engines._ENGINES_CACHE", None, "every engine opened: after a handler, those holding one close"),
    AsokName(f"{_ENGINE}._local", None, "an engine's per-greenlet connections, looked at without opening one"),
    AsokName(f"{_ENGINE}._local.conn", None, "the current greenlet's connection of an engine"),
    AsokName(f"{_ENGINE}._local._all_conns", None, "every connection the current greenlet opened"),
    AsokName("asok.orm.engines.base.BaseEngine.close_connections", ("self",), "closes a greenlet's connections"),
    AsokName(
        "asok.orm.close_all_db_connections",
        (),
        "closes the thread's connections after an offloaded call (and after handlers, without _ENGINES_CACHE)",
    ),
    # -- /asok/live, conn.request and model events (bridge.live, bridge.handshake_request) --
    AsokName("asok.ws.live.on_live_message", ("server", "conn", "text"), "live components: join, call, sync, leave"),
    AsokName("asok.ws.live._validate_model_room", ("conn", "room"), "model: rooms hold the user's own rows only"),
    AsokName("asok.ws.live._has_live_component", ("conn", "cid"), "a call or sync names a component that joined"),
    AsokName("asok.ws.live.logger", None, "Asok's live-component lines, held to the log rate limit"),
    AsokName("asok.ws.live._build_pseudo_request", ("server", "conn"), "conn.request, built from the handshake"),
    AsokName("asok.request.Request.user", None, "conn.request.user is the handshake's user (no second lookup)"),
    AsokName("asok.events.events", None, "Asok's model events (model:created...), relayed to model: rooms"),
    AsokName("asok.events.EventEmitter", (), "the emitter GraphQL's listeners are registered on, fed in the loop"),
    AsokName("asok.events.EventEmitter.on", ("self", "event", "callback"), "listens to a model event"),
    AsokName("asok.events.EventEmitter.emit", ("self", "event", "args", "kwargs"), "hands a model event on"),
    # -- GraphQL subscriptions on /graphql (bridge.graphql) --
    AsokName("asok.api.graphql.on_graphql_ws_message", ("conn", "text"), "handles graphql-transport-ws messages"),
    AsokName("asok.api.graphql.setup_graphql_subscriptions", ("server",), "registers the subscriptions' listeners"),
    # -- Asok's cluster adapters (cluster.adapters, through core.framework) --
    AsokName(
        f"{_ADAPTER}.publish",
        ("self", "channel", "message"),
        "an adapter= that keeps it (NotImplementedError) is refused at start-up",
    ),
    AsokName(
        "asok.ws.adapter.InMemoryWebSocketAdapter.publish",
        ("self", "channel", "message"),
        "Asok's in-memory adapter: one process, nothing to pass on",
    ),
    AsokName(f"{_ADAPTER}.bind", ("self", "server"), "binds a custom adapter to the hub"),
    AsokName(f"{_ADAPTER}.close", ("self",), "closes a custom adapter at the end"),
    # -- logs and metrics (process.logs; ops.metrics through core.framework) --
    AsokName("asok.logger.JSONFormatter", None, "log lines as JSON objects in Asok's shape (LOG_FORMAT=json)"),
    AsokName("asok.core.metrics.default_metrics", None, "Asok's metrics, whose WebSocket gauge asok_green sets"),
    AsokName(
        "asok.core.metrics.MetricsRegistry.set_ws_connections",
        ("self", "count"),
        "asok_websocket_active_connections counts asok_green's sockets",
    ),
)


# --- sessions and users -------------------------------------------------------


def is_asok_app(app: Any) -> bool:
    """True for an Asok app: it has a config and a session store."""
    return hasattr(app, "config") and hasattr(app, "_session_store")


def session_store(app: Any) -> Any | None:
    """The app's session store, or None for an app without one."""
    return getattr(app, "_session_store", None)


def cookie_verifier(app: Any) -> Callable[[str], str | None] | None:
    """The app's own check of a signed cookie value (returns the value, or None if forged), or None if it has none."""
    return getattr(app, "_unsign", None)


def read_session(store: Any, sid: str) -> Any:
    """The data of session ``sid`` in ``store``, or None; Asok's stores answer None when they fail too."""
    return store.load(sid)


def session_backend(store: Any) -> str | None:
    """Where ``store`` keeps sessions: ``"memory"``, ``"file"``, ``"redis"`` (None for a store of another kind)."""
    return getattr(store, "backend", None)


def session_file(store: Any, sid: str) -> str:
    """The path of session ``sid``'s file in a file store; ValueError for an id the store refuses."""
    return store._session_file(sid)


def redis_session_exists(store: Any, sid: str) -> bool:
    """True if session ``sid``'s key is in a Redis store's Redis; raises what Redis raises when it fails."""
    key = store._redis_key(sid) if hasattr(store, "_redis_key") else f"session:{sid}"
    return bool(store._redis.exists(key))


def new_session(sid: str | None, data: Mapping[str, Any]) -> Any:
    """An Asok ``Session`` holding ``data``, with id ``sid``, unmodified."""
    from asok.session import Session

    session = Session(data)
    session.sid = sid
    session.modified = False
    return session


def user_model(name: str) -> Any | None:
    """The model class registered under ``name`` (the user model), or None."""
    from asok.orm import MODELS_REGISTRY

    return MODELS_REGISTRY.get(name)


def find_user(model: Any, user_id: Any) -> Any | None:
    """The row of ``model`` whose id is ``user_id``, or None; blocks on SQLite (run it off the loop)."""
    return model.find(id=user_id)


# --- the drop-in ----------------------------------------------------------------


def install_websocket_classes(server_class: type, connection_class: type) -> None:
    """Make Asok's ``WebSocketServer`` and ``Connection`` names (``asok``, ``asok.ws``) give these classes."""
    import asok
    import asok.ws
    import asok.ws.server

    for module in (asok, asok.ws, asok.ws.server):
        module.WebSocketServer = server_class
    asok.ws.Connection = connection_class


def call_after_logout(callback: Callable[[str], None]) -> None:
    """Call ``callback(sid)`` after each ``request.logout()`` that ends session ``sid`` (once per callback)."""
    from asok.request.auth import AuthMixin

    logout = AuthMixin.logout
    callbacks = getattr(logout, "asok_green_after_logout", None)
    if callbacks is None:
        callbacks = []
        original = logout

        @functools.wraps(original)
        def logout(request: Any) -> None:
            sid = getattr(request.session, "sid", None)
            original(request)
            if sid:
                for after in tuple(callbacks):
                    after(sid)

        logout.asok_green_after_logout = callbacks
        AuthMixin.logout = logout
    if callback not in callbacks:
        callbacks.append(callback)


# --- pages ----------------------------------------------------------------------


class Page:
    """A page as Asok's asset injector assembles it: what asok_green's page steps read, and where they add."""

    __slots__ = ("_injector",)

    def __init__(self, injector: Any) -> None:
        """A view of ``injector`` (Asok's AssetInjector for one page)."""
        self._injector = injector

    @property
    def app(self) -> Any:
        """The app serving the page."""
        return self._injector.app

    @property
    def environ(self) -> dict:
        """The page request's WSGI environ."""
        return self._injector.request.environ

    @property
    def content(self) -> str:
        """The page's HTML so far."""
        return self._injector.content

    @property
    def nonce(self) -> str:
        """The CSP nonce for scripts added to the page."""
        return self._injector.nonce

    def gets_ws_client(self) -> bool:
        """True if Asok is about to add its WebSocket script to this page (and has not yet)."""
        return self._injector._needs_alive()

    def add_script(self, html: str) -> None:
        """Add ``html`` to the scripts Asok writes at the end of the page, after those added so far."""
        self._injector.request._asok_pending_scripts += html


#: The steps of Asok's page assembly that asok_green extends, by the AssetInjector method of each.
_PAGE_STEPS = {
    "ws_port": "_resolve_ws_port",  # returns the port Asok's WebSocket script connects to
    "ws_client": "_inject_alive",  # adds Asok's WebSocket script to the page
    "uses_ws_client": "_content_uses_components",  # returns whether the page needs that script
}


def extend_page_step(step: str, name: str, extension: Callable[[Page, Callable[[], Any]], Any]) -> bool:
    """Run ``extension(page, asok_step)`` in place of a step of Asok's page assembly; ``asok_step()`` runs Asok's.

    ``step`` is ``"ws_port"`` (returns the port Asok's script connects to),
    ``"ws_client"`` (adds Asok's WebSocket script) or ``"uses_ws_client"``
    (returns whether the page needs that script). Returns False, changing
    nothing, when the step already has an extension called ``name`` or this
    Asok builds its pages without such a step.
    """
    from asok.core._asset_injector import AssetInjector

    attribute = _PAGE_STEPS[step]
    current = getattr(AssetInjector, attribute, None)
    extensions = getattr(current, "asok_green_extensions", frozenset())
    if current is None or name in extensions:
        return False

    @functools.wraps(current)
    def extended(injector: Any) -> Any:
        return extension(Page(injector), functools.partial(current, injector))

    extended.asok_green_extensions = extensions | {name}
    setattr(AssetInjector, attribute, extended)
    return True


# --- database connections ---------------------------------------------------------


def engine_cache() -> Mapping[str, Any] | None:
    """Every database engine the app opened, by URL; None when this Asok keeps them elsewhere."""
    try:
        from asok.orm.engines import _ENGINES_CACHE
    except ImportError:
        return None
    return _ENGINES_CACHE


def holds_connection(engine: Any) -> bool:
    """True if ``engine`` may hold a connection opened in the current greenlet (always for an engine of another kind).

    Looks at the engine's per-greenlet attributes without opening anything.
    """
    local = getattr(engine, "_local", None)
    try:
        held = local.__dict__  # this greenlet's (or thread's) attributes: no exception when one is missing
    except AttributeError:
        return True
    return held.get("conn") is not None or bool(held.get("_all_conns"))


def close_connections(engine: Any) -> None:
    """Close the current greenlet's connections of ``engine``."""
    engine.close_connections()


def close_all_db_connections() -> None:
    """Close the database connections Asok's ORM keeps for the current thread (or greenlet)."""
    from asok.orm import close_all_db_connections as close_all

    close_all()


def close_thread_db_connections() -> None:
    """:func:`close_all_db_connections`, if anything loaded Asok's ORM (else there is nothing to close)."""
    if "asok.orm" in sys.modules:
        close_all_db_connections()


# --- /asok/live and model events --------------------------------------------------


def run_live_component_message(server: Any, conn: Any, text: str) -> None:
    """Let Asok handle one live-component message (join, call, sync, leave); errors go back as ``{"op": "error"}``."""
    from asok.ws.live import on_live_message

    on_live_message(server, conn, text)


def live_component_joined(conn: Any, cid: Any) -> bool:
    """True if the live component ``cid`` joined ``conn`` (a ``call`` or ``sync`` for another is refused)."""
    from asok.ws.live import _has_live_component

    return _has_live_component(conn, cid)


def live_logger() -> Any:
    """The logger Asok's live-component handler writes its errors to."""
    from asok.ws.live import logger

    return logger


def model_room_allowed(conn: Any, room: str) -> bool:
    """True if ``conn``'s user may join the ``model:`` room ``room`` (their own rows only), as Asok decides."""
    from asok.ws.live import _validate_model_room

    return _validate_model_room(conn, room)


def build_pseudo_request(server: Any, handshake: Any) -> Any:
    """The Asok ``Request`` a WebSocket handshake would have been.

    ``handshake`` has ``path``, ``headers`` (a dict), ``user`` and ``session``;
    ``server`` has ``app`` and ``secret_key``.
    """
    from asok.ws.live import _build_pseudo_request

    return _build_pseudo_request(server, handshake)


def on_model_event(event: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(obj)`` on each Asok model event ``event`` (``model:created``...), in the thread firing it."""
    from asok.events import events

    events.on(event, callback)


def listeners_registered_by(setup: Callable[[], None]) -> Callable[..., None]:
    """Run ``setup()``, which registers listeners on Asok's global emitter, so they land on an emitter of their own.

    Returns the ``emit(event, *args)`` of that emitter: only its caller
    reaches those listeners. ``setup`` reads ``asok.events.events`` when it
    runs; for that call the name points at the new emitter (nothing yields in
    between), and Asok's own code keeps the global emitter it imported.
    """
    import asok.events

    own = asok.events.EventEmitter()
    shared = asok.events.events
    asok.events.events = own
    try:
        setup()
    finally:
        asok.events.events = shared
    return own.emit


# --- GraphQL ---------------------------------------------------------------------


def graphql_subscriptions_setup() -> Callable[[Any], None] | None:
    """Asok's ``setup(server)`` of GraphQL subscriptions, or None for an Asok without GraphQL."""
    try:
        from asok.api.graphql import setup_graphql_subscriptions
    except ImportError:
        return None
    return setup_graphql_subscriptions


def handle_graphql_message(conn: Any, text: str) -> None:
    """Let Asok handle one graphql-transport-ws message on ``conn``."""
    from asok.api.graphql import on_graphql_ws_message

    on_graphql_ws_message(conn, text)


# --- adapters --------------------------------------------------------------------


def adapter_cannot_publish(adapter: Any) -> bool:
    """True when ``adapter`` keeps ``BaseWebSocketAdapter``'s ``publish``, which only raises NotImplementedError."""
    try:
        from asok.ws.adapter import BaseWebSocketAdapter
    except ImportError:
        return False
    return getattr(type(adapter), "publish", None) is BaseWebSocketAdapter.publish


def adapter_publishes_nothing(adapter: Any) -> bool:
    """True for Asok's ``InMemoryWebSocketAdapter`` itself: a single process, nothing to pass on."""
    try:
        from asok.ws.adapter import InMemoryWebSocketAdapter
    except ImportError:
        return False
    return getattr(type(adapter), "publish", None) is InMemoryWebSocketAdapter.publish


# --- logs and metrics --------------------------------------------------------------


def json_log_formatter() -> logging.Formatter:
    """Asok's JSON log formatter: ``timestamp``, ``level``, ``logger``, ``message``, then the record's extra fields."""
    from asok.logger import JSONFormatter

    return JSONFormatter()


def set_open_sockets_gauge(count: int) -> None:
    """Set Asok's ``asok_websocket_active_connections`` to ``count`` (nothing for an Asok without metrics)."""
    try:
        from asok.core.metrics import default_metrics
    except ImportError:
        return
    default_metrics.set_ws_connections(count)
