"""Attributes of Asok's ``WebSocketServer`` and ``Connection`` that Asok code and Asok users read.

``ws.allowed_origins``, ``ws.max_connections``, ``ws.presence_counts``,
``ws.on_live_message``, ``conn.request`` and ``conn.sock``, each read (and, where
Asok lets one, set) by handlers of a real project under ``asok serve --gevent``.
"""

from __future__ import annotations

import json
import time

import pytest
import websocket

from tests.asok_project import login, make_project
from tests.conftest import INTROSPECTION, asok_serve, ws_connect

pytestmark = pytest.mark.timeout(60)

ATTRIBUTES_WSGI = """
ws.on("/live-alias")(ws.on_live_message)


@ws.on("/attributes")
def attributes(conn, message):
    built_before = "request" in vars(conn)
    request = conn.request
    conn.send_json(
        {
            "allowed_origins": ws.allowed_origins,
            "max_connections": ws.max_connections,
            "presence_counts": sorted(ws.presence_counts.items()),
            "request_built_before_use": built_before,
            "request_kept": conn.request is request and "request" in vars(conn),
            "request": {
                "class": f"{type(request).__module__}.{type(request).__name__}",
                "path": request.path,
                "ip": request.ip,
                "host": request.host,
                "user": request.user.name if request.user else None,
                "session_cookie": request.cookies.get("asok_session") is not None,
                "user_agent": request.user_agent,
            },
            "sock_peer": list(conn.sock.getpeername()),
            "addr": list(conn.addr),
        }
    )


@ws.on("/set")
def set_attribute(conn, message):
    name, _, value = message.partition(" ")
    setattr(ws, name, _json.loads(value))
    conn.send_json(getattr(ws, name))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("project"), extra_wsgi=INTROSPECTION + ATTRIBUTES_WSGI)
    proc = asok_serve(root, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


def ask(server, cookies=None, **kw) -> dict:
    client = ws_connect(server, "/attributes", cookies, **kw)
    try:
        client.send("?")
        return answer_of(client)
    finally:
        client.close()


def answer_of(client) -> dict:
    """The handler's answer, past the presence frames a login may bring."""
    while True:
        answer = json.loads(client.recv())
        if answer.get("type") != "presence":
            return answer


def set_attribute(server, name: str, value) -> object:
    client = ws_connect(server, "/set")
    try:
        client.send(f"{name} {json.dumps(value)}")
        return json.loads(client.recv())
    finally:
        client.close()


def test_conn_request_is_built_on_first_use_from_the_handshake(server):
    cookies = login(server.url, "alice")
    answer = ask(server, cookies)
    assert answer["request_built_before_use"] is False
    assert answer["request_kept"] is True
    request = answer["request"]
    assert request["class"] == "asok.request.request.Request"
    assert request["path"] == "/attributes"
    assert request["ip"] == "127.0.0.1" == answer["addr"][0]
    assert request["host"] == f"127.0.0.1:{server.port}"
    assert request["user"] == "alice"
    assert request["session_cookie"] is True
    assert request["user_agent"] == ""  # websocket-client sends none


def test_conn_request_of_a_guest_has_no_user(server):
    assert ask(server)["request"]["user"] is None


def test_conn_sock_is_the_connections_socket(server):
    client = ws_connect(server, "/attributes")
    try:
        client.send("?")
        answer = answer_of(client)
        assert answer["sock_peer"] == answer["addr"] == list(client.sock.getsockname())
    finally:
        client.close()


def test_presence_counts_are_connections_per_user_in_this_process(server):
    cookies = login(server.url, "bob")
    tabs = [ws_connect(server, "/echo", cookies) for _ in range(2)]
    try:
        counts = dict((str(user), n) for user, n in ask(server, cookies)["presence_counts"])
        assert counts == {"2": 3}  # two tabs and the asking connection
    finally:
        for tab in tabs:
            tab.close()


def test_on_live_message_serves_asok_live_operators_on_another_path(server):
    client = ws_connect(server, "/live-alias")
    try:
        client.send(json.dumps({"op": "get_presence"}))
        answer = json.loads(client.recv())
        assert answer["op"] == "broadcast" and answer["type"] == "presence_list"
    finally:
        client.close()


def test_allowed_origins_lists_what_is_allowed_and_can_be_set(server):
    listed = ask(server)["allowed_origins"]
    assert "http://localhost:8000" in listed and f"http://127.0.0.1:{server.port}" in listed
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(server, "/echo", origin="https://partner.test")
    assert refused.value.status_code == 403
    assert "https://partner.test" in set_attribute(server, "allowed_origins", ["https://partner.test"])
    ws_connect(server, "/echo", origin="https://partner.test").close()


def test_max_connections_is_the_cap_and_can_be_set(server):
    assert ask(server)["max_connections"] > 100  # what the open-files limit allows
    assert set_attribute(server, "max_connections", 2) == 2
    first = ws_connect(server, "/echo")
    second = ws_connect(server, "/echo")
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_connect(server, "/echo")
        assert refused.value.status_code == 503
    finally:
        first.close()
        second.close()
    # /set itself needs a slot: wait until the two are gone.
    client = None
    for _ in range(100):
        try:
            client = ws_connect(server, "/set")
            break
        except websocket.WebSocketBadStatusException:
            time.sleep(0.05)
    assert client is not None
    client.send("max_connections 1000")
    assert json.loads(client.recv()) == 1000
    client.close()
