"""The project's app and its WebSocket handlers, served in the test process on a free port.

:class:`TestServer` runs asok_green's one-port server (``asok_green.make_server``:
pages and WebSockets on the same port, as in production) in a background
thread with an event loop of its own. The test's own thread is left as pytest
made it: nothing is monkey-patched. Everything that belongs to the server (the
app, its ``WebSocketServer``, rooms, presence, broadcasts) lives in that thread;
a test reaches it with :meth:`TestServer.call`, which runs a function there and
waits for its result.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import threading
from collections.abc import Callable
from typing import Any

from .login import login_cookies, user_id

__all__ = ["TestServer", "ServerFailed", "find_project_root"]

#: Seconds the server may take to load the app and listen.
START_TIMEOUT = 60.0


class ServerFailed(RuntimeError):
    """The app could not be loaded or served; the message says why."""


def find_project_root(start: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) that holds a ``wsgi.py``."""
    folder = pathlib.Path(start or os.getcwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / "wsgi.py").is_file():
            return candidate
    return None


def _release(hub: Any) -> None:
    """Destroy the server thread's own hub; a patched process' thread is a greenlet of the main hub: leave that."""
    if not getattr(hub, "main_hub", False):
        hub.destroy(destroy_loop=True)


class TestServer:
    """An Asok project served by asok_green in this process: ``with TestServer() as server: ...``.

    ``app`` is the WSGI app as ``module:attribute`` (default ``wsgi:app``),
    imported from ``root`` (default: the nearest folder holding ``wsgi.py``),
    which also becomes the working directory while the server runs (Asok finds
    its ``.env`` and database from there). The server listens on ``host`` and a
    free port (``port=0``) and serves the pages and every ``WebSocketServer`` the
    app made, as ``asok serve --gevent`` would.
    """

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(
        self,
        app: str = "wsgi:app",
        root: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Describe the server; :meth:`start` serves it."""
        found = pathlib.Path(root).resolve() if root is not None else find_project_root()
        if found is None:
            raise ServerFailed(f"no wsgi.py in {os.getcwd()} or a folder above it: give the project's root")
        self.app_spec = app
        self.root = found
        self.host = host
        self.port = port
        #: The app, and the WebSocketServers it serves (set by :meth:`start`).
        self.app: Any = None
        self.hubs: list[Any] = []
        self._http: Any = None
        self._loop: Any = None
        self._halt: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._previous_cwd: str | None = None

    # -- life -----------------------------------------------------------------

    def start(self) -> TestServer:
        """Load the app and serve it; returns once the port accepts connections."""
        if self._thread is not None:
            return self
        self._previous_cwd = os.getcwd()
        os.chdir(self.root)
        self._thread = threading.Thread(target=self._serve, name="asok-green-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise ServerFailed(f"the app did not start serving within {START_TIMEOUT:g}s")
        if self._failure is not None:
            self._restore_cwd()
            failure = self._failure
            raise ServerFailed(f"could not serve {self.app_spec} from {self.root}: {failure!r}") from failure
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every WebSocket (1001), stop serving and end the server's thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._halt is not None:
            self._loop.run_callback_threadsafe(self._halt.set)
        thread.join(timeout + 5)
        self._restore_cwd()

    def __enter__(self) -> TestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _restore_cwd(self) -> None:
        if self._previous_cwd is not None:
            os.chdir(self._previous_cwd)
            self._previous_cwd = None

    def _serve(self) -> None:
        """The server's thread: its own gevent hub, the app, the one-port server, until :meth:`stop`."""
        import gevent
        from gevent.event import Event

        hub = gevent.get_hub()
        try:
            import asok_green

            from ..bridge import bootstrap

            bootstrap.install_dropin(asok_green.WebSocketServer)
            self.app = bootstrap.load_app(self.app_spec, str(self.root))
            self._http = asok_green.make_server(self.app, host=self.host, port=self.port)
            self.hubs = list(asok_green.WebSocketServer.instances())
            self.port = self._http.server_port
            self._halt = Event()
            self._loop = hub.loop
        except BaseException as error:  # reported to the thread that called start()
            self._failure = error
            self._ready.set()
            _release(hub)
            return
        self._ready.set()
        try:
            self._halt.wait()
            self._http.shutdown(timeout=5.0)
        finally:
            self._loop = None
            _release(hub)

    # -- where it is ------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port``, where the pages are."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port``, where the WebSockets are (the same port)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def ws(self) -> Any:
        """The app's ``WebSocketServer`` (the first one, if it made several)."""
        if not self.hubs:
            raise ServerFailed("the server is not running")
        return self.hubs[0]

    def hub_for(self, path: str) -> Any:
        """The ``WebSocketServer`` that has a route for ``path`` (else the first one)."""
        for hub in self.hubs:
            if hub.match(path)[0] is not None:
                return hub
        return self.ws

    # -- reaching into it ---------------------------------------------------------

    def call(self, fn: Callable[..., Any], /, *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the server's thread (where its state lives) and return its result.

        ``ws.broadcast``, rooms and presence belong to the server's event loop:
        call them through here from a test. Re-raises what ``fn`` raises.
        """
        if self._loop is None:
            raise ServerFailed("the server is not running")
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)

        def spawn() -> None:
            import gevent

            gevent.spawn(run)

        self._loop.run_callback_threadsafe(spawn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{getattr(fn, '__name__', fn)!r} did not return within {timeout:g}s") from None

    def login(self, user: Any) -> dict[str, str]:
        """The session cookies of ``user`` (a user object with an ``id``, or an id): a new session each time.

        A new one each time, so a test that logs out (or revokes) one session
        leaves the next test's login alone.
        """
        from ..bridge.asok_api import session_store

        app = self.app
        config = getattr(app, "config", None) or {}
        return self.call(login_cookies, config, session_store(app), user_id(user))

    def find_user(self, **criteria: Any) -> Any:
        """The user the app's user model (``AUTH_MODEL``, default ``User``) finds for ``criteria``, or None."""
        config = getattr(self.app, "config", None) or {}
        name = config.get("AUTH_MODEL", "User")
        model = next((m for m in getattr(self.app, "models", ()) if m.__name__ == name), None)
        if model is None:
            raise LookupError(f"the app has no model named {name!r}")
        return self.call(model.find, **criteria)

    def client(self, timeout: float = 5.0) -> Any:
        """A :class:`~asok_green.testing.client.TestClient` of this server."""
        from .client import TestClient

        return TestClient(self, timeout=timeout)
