"""One path, one route, one registry key: how each spelling of a WebSocket path is served.

A path is percent-decoded (as UTF-8) and must then be canonical; any other
spelling gets 404. So every client that opens is registered under the path a
broadcast names, whatever spelling it used (asok_green/routing.py says why).
"""

from __future__ import annotations

import json

import pytest
import websocket

from tests.asok_project import fetch, make_project
from tests.conftest import asok_serve, ws_connect
from tests.raw_client import RawClient

pytestmark = pytest.mark.timeout(90)

PATHS_WSGI = """
@ws.on("/say")
def say(conn, message):
    target, _, text = message.partition(" ")
    conn.send(f"reached {ws.broadcast(target, text)}")


@ws.on("/room/[name]")
def room(conn, message):
    conn.send_json({"path": conn.path, "params": conn.params})
"""

NON_CANONICAL = [
    "/notifications/",
    "//notifications",
    "/./notifications",
    "/echo/../notifications",
    "/chat//general",
    "/chat/general/",
    "/chat/./general",
    "/chat/..",
    "/chat/%2E%2E",
    "/chat/a%2F",
    "/chat/%00",
    "/chat/%FF",
    "/room/a%2Fb",
]


@pytest.fixture(scope="module")
def paths_server(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("paths"), extra_wsgi=PATHS_WSGI)
    proc = asok_serve(project, tmp_path_factory.mktemp("paths-logs"))
    yield proc
    proc.stop()


def status_of(server, path: str) -> int:
    raw = RawClient(server.port)
    try:
        head = raw.upgrade(path)
    finally:
        raw.close()
    return int(head.split(b" ", 2)[1])


def open_or_404(server, path: str):
    """A client on ``path``, or None if the server answered 404 (anything else fails)."""
    try:
        return ws_connect(server, path)
    except websocket.WebSocketBadStatusException as refused:
        assert refused.status_code == 404, (path, refused.status_code)
        return None


def test_every_non_canonical_spelling_gets_404(paths_server):
    statuses = {path: status_of(paths_server, path) for path in NON_CANONICAL}
    assert statuses == dict.fromkeys(NON_CANONICAL, 404)
    assert "not a canonical path" in paths_server.wait_for_log("'/notifications/'")


def test_a_broadcast_to_the_canonical_path_reaches_every_client_that_opened(paths_server):
    spellings = ["/notifications", "/notifications/", "//notifications", "/%6Eotifications", "/notification%73"]
    opened = {path: client for path in spellings if (client := open_or_404(paths_server, path))}
    assert "/notifications" in opened and "/%6Eotifications" in opened
    for client in opened.values():
        assert client.recv() == "Connected to notification stream"
    assert fetch(paths_server.url + "/notify?msg=to-everyone").status == 200
    for path, client in opened.items():
        assert client.recv() == "to-everyone", path
        client.close()


def test_percent_encoded_paths_are_registered_under_their_decoded_text(paths_server):
    spellings = {
        "/room/caf%C3%A9": "café",
        "/room/caf%c3%a9": "café",
        "/room//caf%C3%A9": "café",
        "/room/caf%C3%A9/": "café",
        "/room/%67eneral": "general",
        "/room/general": "general",
    }
    opened = {path: client for path in spellings if (client := open_or_404(paths_server, path))}
    assert set(opened) == {"/room/caf%C3%A9", "/room/caf%c3%a9", "/room/%67eneral", "/room/general"}
    for path, client in opened.items():
        client.send("where am i")
        name = spellings[path]
        assert json.loads(client.recv()) == {"path": f"/room/{name}", "params": {"name": name}}
    sender = ws_connect(paths_server, "/say")
    for name in ("café", "general"):
        sender.send(f"/room/{name} hello {name}")
        assert sender.recv() == "reached 2"
        for path, client in opened.items():
            if spellings[path] == name:
                assert client.recv() == f"hello {name}", path
