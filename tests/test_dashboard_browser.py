"""The live dashboard in real headless Chromium, served by ``asok serve --gevent``.

Real clients (websocket-client) log in, connect to ``/asok/live`` and join rooms
(the test project's room authorizer lets them); the open dashboard shows the
connection count and the rooms with their member counts within a few seconds,
then shows them gone once the clients leave. A screenshot of the page, taken
while the clients are connected, is saved to artifacts/dashboard.png (copy it
to docs/dashboard.png to refresh the README's picture).

Chromium is Debian's (/usr/bin/chromium), driven by Playwright, as in
tests/test_browser.py; without it the tests skip, or fail when CI=true.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import websocket

from tests.asok_project import login, project_env
from tests.conftest import asok_serve, ws_connect
from tests.test_browser import browser  # noqa: F401 - Debian's headless Chromium, as a fixture

pytestmark = pytest.mark.timeout(120)

TOKEN = "browser-dashboard-token-81d2"
SCREENSHOT = pathlib.Path(__file__).resolve().parent.parent / "artifacts" / "dashboard.png"
WAIT_MS = 10_000

#: True once the rooms table lists ``room`` with ``connections`` here and ``users`` on all nodes.
ROOM_ROW = """([room, connections, users]) => [...document.querySelectorAll("#rooms tbody tr")].some(
    (tr) => [...tr.cells].map((td) => td.textContent).join("|") === `${room}|${connections}|${users}`)"""
NO_ROOM_ROW = """(room) => document.querySelector("#status").textContent === "live" &&
    ![...document.querySelectorAll("#rooms tbody tr")].some((tr) => tr.cells[0].textContent === room)"""
CONNECTIONS = """(n) => document.querySelector("#connections").textContent === String(n)"""


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """The test project, its dashboard opened by ``TOKEN`` too."""
    proc = asok_serve(project, tmp_path_factory.mktemp("dashboard-browser"), env=project_env(WS_DASHBOARD_TOKEN=TOKEN))
    yield proc
    proc.stop()


def join(client, room: str) -> None:
    """Ask to join ``room`` on /asok/live (the page is where the test sees it happen)."""
    client.send(json.dumps({"op": "join_room", "room": room}))


def dashboard_page(browser, server, **context_options):  # noqa: F811 - the fixture
    page = browser.new_context(viewport={"width": 1440, "height": 960}, **context_options).new_page()
    return page


def test_dashboard_shows_clients_join_rooms_and_leave(browser, server):  # noqa: F811 - the fixture
    page = dashboard_page(browser, server)
    answer = page.goto(f"{server.url}/asok/green/?token={TOKEN}")
    assert answer.status == 200
    page.wait_for_function(CONNECTIONS, arg=0, timeout=WAIT_MS)

    alice, bob = login(server.url, "alice"), login(server.url, "bob")
    clients = [ws_connect(server, "/asok/live", cookies=c) for c in (alice, alice, bob)]
    join(clients[0], "support")
    join(clients[1], "support")
    join(clients[2], "support")
    join(clients[2], "sales")
    echo = ws_connect(server, "/echo")
    for i in range(50):
        echo.send(f"hello {i}")
        echo.recv()
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(server, "/echo", origin="https://evil.example")

    page.wait_for_function(CONNECTIONS, arg=4, timeout=WAIT_MS)
    page.wait_for_function(ROOM_ROW, arg=["support", 3, 2], timeout=WAIT_MS)
    page.wait_for_function(ROOM_ROW, arg=["sales", 1, 1], timeout=WAIT_MS)
    page.wait_for_function("() => document.querySelector('#online-count').textContent === '2'", timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.querySelector('#refusals tbody').textContent.includes('origin')", timeout=WAIT_MS
    )
    # A few seconds of traffic, so that the charts of the screenshot have something to show.
    snapshots = "() => Number(document.body.dataset.snapshots || 0)"
    until = page.evaluate(snapshots) + 8
    for burst in range(200):
        if page.evaluate(snapshots) >= until:
            break
        for i in range(10 + 15 * (burst % 4)):
            echo.send(f"burst {burst} {i}")
            echo.recv()
        page.wait_for_timeout(200)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    clients[2].close()
    page.wait_for_function(NO_ROOM_ROW, arg="sales", timeout=WAIT_MS)
    page.wait_for_function(ROOM_ROW, arg=["support", 2, 1], timeout=WAIT_MS)
    for client in (*clients[:2], echo):
        client.close()
    page.wait_for_function(NO_ROOM_ROW, arg="support", timeout=WAIT_MS)
    page.wait_for_function(CONNECTIONS, arg=0, timeout=WAIT_MS)
    page.context.close()


def test_dashboard_for_an_admin_session_and_not_for_others(browser, server):  # noqa: F811 - the fixture
    for name, status in (("alice", 200), ("bob", 403)):
        cookies = login(server.url, name)
        context = browser.new_context()
        context.add_cookies([{"name": k, "value": v, "url": server.url} for k, v in cookies.items()])
        page = context.new_page()
        assert page.goto(f"{server.url}/asok/green/").status == status
        if status == 200:
            page.wait_for_function("() => document.querySelector('#status').textContent === 'live'", timeout=WAIT_MS)
        context.close()
    context = browser.new_context()
    assert context.new_page().goto(f"{server.url}/asok/green/").status == 403
    context.close()
