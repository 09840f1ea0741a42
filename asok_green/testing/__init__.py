"""Testing an Asok project's WebSocket handlers: a pytest plugin and a plain API.

    def test_chat(ws_client):                     # the plugin's fixture
        with ws_client.websocket("/chat/general", user=1) as ws:
            ws.send("hi")
            assert ws.receive() == "alice: hi"

The plugin (:mod:`asok_green.testing.plugin`) is registered by the ``pytest11``
entry point, so installing asok_green is enough. Outside pytest::

    with TestServer("wsgi:app", root="path/to/project") as server:
        with server.client() as client, client.websocket("/echo") as ws: ...

Why a thread and not a patched process or a subprocess. The server is the
real one (``asok_green.make_server``: pages and WebSockets on one port), run in
a background thread that has its own gevent hub; the test process is not
monkey-patched. A pytest plugin is loaded into every test run of the
environment, so patching the process from it would change every other test's
threads, sockets and SSL, and patching after pytest has imported ``threading``
and ``ssl`` is not reliable anyway. gevent's sockets and greenlets work in any
thread with a hub of its own, which is all the server needs: its greenlets
share that one thread as they share the main thread of ``asok serve
--gevent``. A subprocess would cost a second or more per start and keep the
app out of the test's reach; in the same process a test calls
``server.call(ws.broadcast, "/chat/general", "hello")`` and reads
``server.ws.get_online_users()`` through the server's own loop. The test's
client sockets are plain blocking sockets (websocket-client) in the test's
thread. If the test process is patched after all (a conftest that calls
``gevent.monkey.patch_all()``), the thread is a greenlet of the same hub and
the kit works the same way.

Determinism comes from the wire, not from sleeps: the client waits for a
ping's pong to know that the server has handled what it sent (and has run
``on_connect`` after the handshake), and for the end of the TCP stream to know
that ``on_disconnect`` has run (:mod:`asok_green.testing.websocket`).
"""

from __future__ import annotations

from .client import Response, TestClient
from .login import login_cookies, sign
from .server import ServerFailed, TestServer, find_project_root
from .websocket import ConnectionClosed, HandshakeRefused, ReceiveTimeout, RoomRefused, TestWebSocket

__all__ = [
    "TestServer",
    "TestClient",
    "TestWebSocket",
    "Response",
    "ReceiveTimeout",
    "ConnectionClosed",
    "HandshakeRefused",
    "RoomRefused",
    "ServerFailed",
    "find_project_root",
    "login_cookies",
    "sign",
]
