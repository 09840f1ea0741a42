"""The handler's endpoints: answered before the app, in order, each free to let a request pass.

The server layer knows no endpoint of its own; the API layer's handler
(:class:`asok_green.api.serving.AppHandler`) plugs in the resume client's
script and the dashboard, and a subclass may add more.
"""

from __future__ import annotations

import gevent
import gevent.socket
import pytest

from asok_green import make_server, serve
from asok_green.api import serving
from asok_green.bridge import browser_client
from asok_green.server import hub as hub_module
from asok_green.server.green_server import GreenServer
from asok_green.server.handler import GreenHandler
from asok_green.server.hub import WebSocketServer

pytestmark = pytest.mark.timeout(60)


def page(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page " + environ["PATH_INFO"].encode()]


def custom(handler) -> bool:
    """Answers /custom, lets everything else pass."""
    if handler.request_variables.get("PATH_INFO") != "/custom":
        return False
    handler.start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    handler.write(b"custom")
    return True


class CustomHandler(serving.AppHandler):
    endpoints = (*serving.AppHandler.endpoints, custom)


def get(port: int, path: str) -> bytes:
    sock = gevent.socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with gevent.Timeout(10):
            while chunk := sock.recv(65536):
                data += chunk
        return data
    finally:
        sock.close()


@pytest.fixture
def hub():
    ws = WebSocketServer()
    yield ws
    ws.stop()
    hub_module._INSTANCES.remove(ws)


def test_an_endpoint_answers_before_the_app_and_lets_the_rest_pass(hub):
    server = make_server(page, hub, "127.0.0.1", 0, handler_class=CustomHandler)
    try:
        assert get(server.server_port, "/custom").endswith(b"\r\n\r\ncustom")
        assert get(server.server_port, "/other").endswith(b"page /other")
        # The upper layers' endpoints still come first.
        assert b"200 OK" in get(server.server_port, browser_client.SCRIPT_PATH).split(b"\r\n")[0]
    finally:
        server.close()


def test_the_server_layer_alone_plugs_in_no_endpoint(hub):
    assert GreenHandler.endpoints == ()
    server = GreenServer(("127.0.0.1", 0), page, [hub])
    server.start()
    try:
        assert get(server.server_port, browser_client.SCRIPT_PATH).endswith(
            b"page " + browser_client.SCRIPT_PATH.encode()
        )
    finally:
        server.close()


def test_the_public_serve_and_make_server_are_the_api_layers():
    assert make_server is serving.make_server and serve is serving.serve
