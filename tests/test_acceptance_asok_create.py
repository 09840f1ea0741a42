"""From ``asok dev`` to production without changing a line, on a project made by ``asok create``.

One project for the whole module: ``asok create demo`` with the doc's chat
handler appended to its wsgi.py, nothing else. The same project is then served
three ways, only the port and the command-line options changing:

- ``asok dev --gevent``: Chromium on the home page chats on ``/chat/general``;
  editing the page's template reloads the browser by itself, and the reloaded
  page's chat socket connects to the restarted server and chats again;
- ``asok serve --gevent`` behind a real nginx with the README's block: two
  clients chat through nginx's port;
- ``asok serve --gevent --certfile ... --keyfile ...``: two wss clients that
  verify the server against the test's authority chat.

The created page has no chat script of its own, and no ``window.asokWS`` either
(Asok injects it only into a page whose content has a ``ws-`` attribute). The
browser's chat client is therefore :data:`CHAT_CLIENT`, a script every document
the browser loads runs once the page is parsed, as a page's own chat script
would: it opens the socket on the page's own host and port, with ``wss:`` under
https, the way ``asokWS`` does.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.asok_project import asok_create, fetch, project_env
from tests.conftest import asok_serve, free_port
from tests.nginx_support import Nginx, require_nginx
from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture
from tests.test_dev_mode import READY, asok_dev
from tests.test_nginx import README_BLOCK, site
from tests.test_nginx import connect as connect_through_nginx
from tests.test_one_port import DOC_HANDLER
from tests.test_tls import Certificates, https_get, wss_connect

pytestmark = pytest.mark.timeout(120)

ROOM = "/chat/general"
CREATED_HEADING = "Welcome to Asok"
EDITED_HEADING = "Welcome to the edited page"

#: The browser's chat client: opens the room's socket once the page is parsed, keeps what it receives.
CHAT_CLIENT = """
window.__chat = [];
document.addEventListener("DOMContentLoaded", () => {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "ROOM");
    socket.onopen = () => { window.__chatOpen = true; };
    socket.onmessage = (event) => { window.__chat.push(event.data); };
    window.__chatSocket = socket;
});
""".replace("ROOM", ROOM)


def project_sources(root: pathlib.Path) -> dict[str, str]:
    """The text of every file a developer edits in the project (code, templates, assets, .env)."""
    suffixes = {".py", ".html", ".css", ".js", ".json", ".env"}
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and (path.suffix in suffixes or path.name == ".env")
    }


@pytest.fixture(scope="module")
def created(tmp_path_factory) -> tuple[pathlib.Path, dict[str, str]]:
    """``asok create demo`` with the doc's chat handler pasted at the end of its wsgi.py, and its sources."""
    root = asok_create(tmp_path_factory.mktemp("created"), "demo", wsgi_tail=DOC_HANDLER)
    return root, project_sources(root)


@pytest.fixture
def project(created) -> pathlib.Path:
    """The created project, checked to be as it was made."""
    root, sources = created
    assert project_sources(root) == sources, "the project changed between the tests"
    return root


def chat_in_page(page, text: str) -> None:
    """Send ``text`` on the page's chat socket once it is open; wait for the room's broadcast of it."""
    page.wait_for_function("window.__chatOpen === true", timeout=20_000)
    page.evaluate("(text) => window.__chatSocket.send(text)", text)
    page.wait_for_function("(line) => window.__chat.includes(line)", arg=f"Guest: {text}", timeout=20_000)


def test_asok_dev_gevent_editing_the_page_reloads_the_browser_and_the_chat_reconnects(
    browser,  # noqa: F811 - the fixture
    project,
    tmp_path,
):
    template = project / "src/pages/page.html"
    created = template.read_text()
    assert CREATED_HEADING in created
    dev = asok_dev(project, tmp_path, "--gevent")
    context = browser.new_context()
    try:
        dev.wait_for_log(READY, timeout=30)
        context.add_init_script(CHAT_CLIENT)
        page = context.new_page()
        page.goto(dev.url + "/")
        page.wait_for_selector(f"h1:has-text('{CREATED_HEADING}')", timeout=20_000)
        chat_in_page(page, "hi")
        page.evaluate("window.__sameDocument = true")
        # Asok's live-reload script reloads when /__reload's answer changes: let it learn the first one.
        with page.expect_response(lambda response: response.url.endswith("/__reload"), timeout=20_000):
            pass

        template.write_text(created.replace(CREATED_HEADING, EDITED_HEADING))

        page.wait_for_selector(f"h1:has-text('{EDITED_HEADING}')", timeout=60_000)
        assert page.evaluate("window.__sameDocument") is None, "the new text came without a reload"
        chat_in_page(page, "again")
        assert "restarting: closing 1 WebSocket(s) with 1012" in dev.log()
    finally:
        context.close()
        stopped = dev.stop()
        template.write_text(created)
    assert stopped == 0


def assert_two_clients_chat(first, second) -> None:
    """``first`` says hi and both clients of the doc's chat room hear it; both are closed after."""
    try:
        first.send("hi")
        assert first.recv() == "Guest: hi"
        assert second.recv() == "Guest: hi"
    finally:
        first.close()
        second.close()


def test_asok_serve_gevent_behind_nginx_chats(project, tmp_path):
    require_nginx()
    backend = asok_serve(project, tmp_path, env=project_env(TRUSTED_PROXIES="127.0.0.1"))
    proxy = None
    try:
        port = free_port()
        proxy = Nginx(tmp_path / "nginx", site(port, backend.port, README_BLOCK), port)
        page = fetch(proxy.url + "/")
        assert page.status == 200 and CREATED_HEADING in page.text
        assert_two_clients_chat(connect_through_nginx(proxy, ROOM), connect_through_nginx(proxy, ROOM))
    finally:
        if proxy is not None:
            proxy.stop()
        assert backend.stop() == 0


def test_asok_serve_gevent_with_a_certificate_chats_over_wss(project, tmp_path):
    certificates = Certificates(tmp_path)
    server = asok_serve(project, tmp_path, *certificates.options)
    try:
        status, body = https_get(f"https://127.0.0.1:{server.port}/", certificates)
        assert status == 200 and CREATED_HEADING in body
        first = wss_connect(server.port, ROOM, certificates)
        assert_two_clients_chat(first, wss_connect(server.port, ROOM, certificates))
    finally:
        assert server.stop() == 0
