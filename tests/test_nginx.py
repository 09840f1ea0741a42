"""Behind a real nginx: the README's one ``location /`` block, and a ``location /ws/`` prefix.

nginx (Debian's) runs on a free port with a config written here; the project is
served by ``asok serve --gevent`` with ``TRUSTED_PROXIES=127.0.0.1``. Clients bound
to 127.0.0.2 stand for people on other machines: through nginx, ``conn.addr`` is
theirs, not nginx's. Debian's Chromium chats through nginx as well.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
import websocket

from tests.asok_project import make_project, project_env
from tests.conftest import INTROSPECTION, asok_serve, free_port
from tests.nginx_support import Nginx, require_nginx
from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture

pytestmark = pytest.mark.timeout(120)

CLIENT = "127.0.0.2"

#: The README's block ("Behind a proxy"), inside a server on the test's port.
README_BLOCK = """\
location / {
    proxy_pass http://127.0.0.1:8000;
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Port $server_port;
    proxy_read_timeout 3600s;
}
"""

#: The README's prefix block: WebSockets under /ws/ (the server has WS_PATH=/ws).
PREFIX_BLOCK = README_BLOCK.replace("location / {", "location /ws/ {")

MAP = "map $http_upgrade $connection_upgrade {\n    default upgrade;\n    ''      close;\n}\n"


def site(port: int, backend: int, *blocks: str) -> str:
    body = "".join(block.replace("127.0.0.1:8000", f"127.0.0.1:{backend}") for block in blocks)
    return f"{MAP}\nserver {{\n    listen 127.0.0.1:{port};\n    server_name _;\n{body}}}\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("nginx-project"), extra_wsgi=INTROSPECTION)


def serve_behind_nginx(project, tmp, *blocks: str, **env: str):
    require_nginx()
    backend = asok_serve(project, tmp, env=project_env(TRUSTED_PROXIES="127.0.0.1", **env))
    port = free_port()
    try:
        proxy = Nginx(tmp / "nginx", site(port, backend.port, *blocks), port)
    except BaseException:
        backend.stop()
        raise
    return backend, proxy


@pytest.fixture(scope="module")
def plain(project, tmp_path_factory):
    """The README's one block in front of the server."""
    backend, proxy = serve_behind_nginx(project, tmp_path_factory.mktemp("plain"), README_BLOCK)
    yield proxy
    proxy.stop()
    backend.stop()


@pytest.fixture(scope="module")
def prefixed(project, tmp_path_factory):
    """Pages on ``location /``, WebSockets on ``location /ws/``; the server has WS_PATH=/ws."""
    tmp = tmp_path_factory.mktemp("prefixed")
    backend, proxy = serve_behind_nginx(project, tmp, README_BLOCK, PREFIX_BLOCK, WS_PATH="/ws")
    yield proxy
    proxy.stop()
    backend.stop()


def connect(proxy: Nginx, path: str, source: str = CLIENT, headers: list[str] | None = None):
    """A WebSocket through nginx from a socket bound to ``source``, with the page's Origin."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5, source_address=(source, 0))
    return websocket.create_connection(
        proxy.ws_url + path, socket=sock, origin=proxy.url, header=headers or [], timeout=5
    )


def introspect(ws) -> dict:
    ws.send("{}")
    return json.loads(ws.recv())


def test_conn_addr_is_the_client_behind_nginx(plain):
    ws = connect(plain, "/introspect")
    try:
        assert introspect(ws)["addr"] == [CLIENT, 0]
    finally:
        ws.close()


def test_a_client_cannot_name_itself_through_nginx(plain):
    ws = connect(plain, "/introspect", headers=["X-Forwarded-For: 198.51.100.7", "X-Real-IP: 198.51.100.8"])
    try:
        assert introspect(ws)["addr"] == [CLIENT, 0]
    finally:
        ws.close()


def test_chat_through_nginx(plain):
    first, second = connect(plain, "/chat/general"), connect(plain, "/chat/general")
    try:
        first.send("through nginx")
        assert first.recv() == "Guest: through nginx"
        assert second.recv() == "Guest: through nginx"
    finally:
        first.close()
        second.close()


def test_another_sites_page_is_refused_through_nginx(plain):
    sock = socket.create_connection(("127.0.0.1", plain.port), timeout=5, source_address=(CLIENT, 0))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(plain.ws_url + "/echo", socket=sock, origin="http://evil.example", timeout=5)
    assert refused.value.status_code == 403


def test_a_page_through_nginx_points_its_sockets_at_nginx(plain):
    with urllib.request.urlopen(plain.url + "/", timeout=5) as answer:
        csp = answer.headers["Content-Security-Policy"]
        body = answer.read().decode()
    assert f"window.ASOK_WS_PORT = {plain.port};" in body
    assert f"ws://127.0.0.1:{plain.port}" in csp
    assert "window.ASOK_WS_PATH =" not in body  # no WS_PATH: nothing changes


def test_routes_under_the_prefix_through_nginx(prefixed):
    first, second = connect(prefixed, "/ws/chat/general"), connect(prefixed, "/ws/chat/general")
    try:
        first.send("under /ws")
        assert second.recv() == "Guest: under /ws"
        probe = connect(prefixed, "/ws/introspect")
        answer = introspect(probe)
        probe.close()
        assert answer["path"] == "/introspect" and answer["addr"] == [CLIENT, 0]
    finally:
        first.close()
        second.close()
    with urllib.request.urlopen(prefixed.url + "/", timeout=5) as page:
        assert 'window.ASOK_WS_PATH = "/ws";' in page.read().decode()


# -- Chromium through nginx ----------------------------------------------------------


def chat_page(browser, proxy: Nginx):  # noqa: F811 - the fixture
    """The test project's chat page, loaded through nginx, with its socket open."""
    context = browser.new_context()
    page = context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(proxy.url + "/")
    page.wait_for_selector("#chat[data-state=open]", timeout=10_000)
    return context, page, sockets


@pytest.mark.parametrize("setup, path", [("plain", "/chat/general"), ("prefixed", "/ws/chat/general")])
def test_chromium_chats_through_nginx(browser, request, setup, path):  # noqa: F811 - the fixture
    proxy = request.getfixturevalue(setup)
    alice, alice_page, alice_sockets = chat_page(browser, proxy)
    bob, bob_page, _ = chat_page(browser, proxy)
    try:
        assert f"ws://127.0.0.1:{proxy.port}{path}" in alice_sockets
        alice_page.locator("#message").fill("hello through nginx")
        alice_page.locator("#message").press("Enter")
        bob_page.wait_for_selector("#messages li:has-text('Guest: hello through nginx')", timeout=10_000)
        alice_page.wait_for_selector("#messages li:has-text('Guest: hello through nginx')", timeout=10_000)
    finally:
        alice.close()
        bob.close()


def test_a_page_for_a_named_host_logs_no_host_mismatch(plain, prefixed):
    for proxy in (plain, prefixed):
        request = urllib.request.Request(proxy.url + "/", headers={"Host": f"example.com:{proxy.port}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert f"ws://example.com:{proxy.port}" in answer.headers["Content-Security-Policy"]
    logs = [path.read_text(errors="replace") for path in _server_logs(plain, prefixed)]
    assert len(logs) == 2 and not any("Host header mismatch" in log for log in logs)


def _server_logs(*proxies: Nginx):
    for proxy in proxies:
        yield from proxy.main.parent.parent.glob("server-*.log")
