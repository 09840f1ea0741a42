"""Asok's ``/asok/live`` operators served by ``asok serve --gevent``, end to end.

Presence, rooms, typing indicators, read receipts, live components and model
events: raw WebSocket clients talk to a real server process serving a real Asok
project (SQLite users alice and bob), and every message is checked to the letter
of Asok's documentation. Room presence is asok_green's extension.
"""

from __future__ import annotations

import html
import json
import pathlib
import re
import sqlite3
import time
from types import SimpleNamespace

import gevent
import gevent.socket
import pytest
import websocket

from asok_green.api.websocket_server import WebSocketServer
from asok_green.server import hub as hub_module
from asok_green.server.connection import Connection
from tests.asok_project import fetch, login, make_project
from tests.conftest import INTROSPECTION, asok_serve, ws_connect

pytestmark = pytest.mark.timeout(60)

#: WebSocket routes added to the test project for the server-side API.
LIVE_WSGI = '''
@ws.on("/rooms")
def rooms_api(conn, message):
    """``join R`` / ``leave R`` through conn.join / conn.leave; answers with the rooms after."""
    command, _, room = message.partition(" ")
    joined = conn.join(room) if command == "join" else None
    if command == "leave":
        conn.leave(room)
    conn.send_json({"joined": joined, "rooms": sorted(conn.rooms)})
'''

#: Pages and a component added to the test project: name -> source.
LIVE_FILES = {
    "src/pages/shout/page.py": '''\
"""/shout?room=R&msg=x: ws.broadcast_to(R, x) from a page; answers how many got it."""


def render(request):
    return request.text(str(request.app.ws.broadcast_to(request.args.get("room", ""), request.args.get("msg", ""))))
''',
    "src/pages/touch/page.py": '''\
"""/touch: save the logged-in user, which fires Asok's model:updated event."""


def render(request):
    if request.user is None:
        return request.text("guest", status=401)
    request.user.save()
    return request.text("saved")
''',
    "src/components/counter.py": '''\
"""A counter, the live component of Asok's documentation."""

from asok.component import Component, exposed


class Counter(Component):
    count = 0
    step = 1
    _bindable = ["step"]

    @exposed
    def increment(self):
        self.count += int(self.step)

    def reset(self):
        self.count = 0

    def render(self):
        return '<p class="counter"><output>{{ count }}</output> <button ws-click="increment">+{{ step }}</button></p>'
''',
    "src/pages/counter/page.py": '''\
"""/counter: a page embedding the Counter component."""


def render(request):
    return request.html("page.html")
''',
    "src/pages/counter/page.html": """\
{% extends "html/base.html" %}
{% block title %}Counter{% endblock %}
{% block main %}{{ component("Counter") }}{% endblock %}
""",
}

COMPONENT = re.compile(r'<div id="asok-([A-Za-z0-9_-]+)" data-asok-component="Counter" data-asok-state="([^"]*)"')


@pytest.fixture(scope="module")
def live_project(tmp_path_factory) -> pathlib.Path:
    """The test project plus the pages, routes and component above."""
    root = make_project(tmp_path_factory.mktemp("live") / "site", extra_wsgi=INTROSPECTION + LIVE_WSGI)
    for rel, text in LIVE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def ids(live_project) -> dict[str, int]:
    """User ids by name, from the project's database."""
    with sqlite3.connect(live_project / "db.sqlite3") as db:
        return dict(db.execute("SELECT name, id FROM users"))


@pytest.fixture(scope="module")
def server(live_project, tmp_path_factory):
    """The project served by ``asok serve --gevent``."""
    proc = asok_serve(live_project, tmp_path_factory.mktemp("live-logs"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def cookies(server) -> dict[str, dict[str, str]]:
    """Session cookies of alice and bob."""
    return {name: login(server.url, name) for name in ("alice", "bob")}


class Client:
    """A raw WebSocket client that reads JSON and keeps what a test did not wait for yet."""

    def __init__(self, server, path: str = "/asok/live", cookies: dict | None = None):
        self.ws = ws_connect(server, path, cookies=cookies)
        self.backlog: list = []

    def send(self, **message) -> None:
        """Send ``message`` as JSON."""
        self.ws.send(json.dumps(message))

    def _read(self, timeout: float):
        self.ws.settimeout(timeout)
        try:
            message = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        try:
            return json.loads(message)
        except (TypeError, ValueError):
            return message

    def expect(self, timeout: float = 5, **fields):
        """The first message, waiting up to ``timeout``, that has ``fields`` (a text: ``text=``)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.backlog:
                if _matches(message, fields):
                    self.backlog.remove(message)
                    return message
            left = deadline - time.monotonic()
            message = self._read(left) if left > 0 else None
            if message is None:
                raise AssertionError(f"no message with {fields} within {timeout}s; got {self.backlog}")
            self.backlog.append(message)

    def handled(self, until: dict | None = None, timeout: float = 5) -> dict:
        """Read up to the marker, keeping what comes before it; return the marker.

        The marker is the first message with the fields ``until`` that arrives from now on,
        by default the answer to a ``get_presence`` sent now: the server answers this
        client in order, after what it sent it before and what it sent for its earlier messages.
        """
        if until is None:
            self.send(op="get_presence")
            until = {"type": "presence_list", "room": _MISSING}
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            message = self._read(left) if left > 0 else None
            if message is None:
                raise AssertionError(f"no message with {until} within {timeout}s; got {self.backlog}")
            if _matches(message, until):
                return message
            self.backlog.append(message)

    def silent(self, until: dict | None = None, **fields) -> dict:
        """Assert that no message with ``fields`` came before the marker (see :meth:`handled`); return the marker.

        The caller makes sure the event that must not reach this client was handled first.
        """
        marker = self.handled(until)
        unexpected = [m for m in self.backlog if _matches(m, fields)]
        assert not unexpected, f"unexpected {unexpected}"
        return marker

    def close(self) -> None:
        """Close the WebSocket."""
        self.ws.close()


def _matches(message, fields: dict) -> bool:
    if isinstance(message, str):
        return fields == {"text": message}
    return isinstance(message, dict) and all(message.get(k, _MISSING) == v for k, v in fields.items())


_MISSING = object()


@pytest.fixture
def connect(server, cookies):
    """Open clients as ``connect(user=None, path="/asok/live")``; all closed, and gone, after the test."""
    opened: list[Client] = []

    def open_client(user: str | None = None, path: str = "/asok/live") -> Client:
        client = Client(server, path, cookies[user] if user else None)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()
    # Each test starts from an empty server: no presence left over from the last one.
    probe = ws_connect(server, "/introspect")
    deadline = time.monotonic() + 5
    while introspect(probe)["connections"] > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    probe.close()


def wait_for_connections(server, count: int) -> None:
    """Wait until ``server`` holds ``count`` connections besides the asking one: the closes before are handled."""
    probe = ws_connect(server, "/introspect")
    deadline = time.monotonic() + 10
    while (held := introspect(probe)["connections"] - 1) != count:
        assert time.monotonic() < deadline, f"{held} connections, not {count}"
        time.sleep(0.05)
    probe.close()


def introspect(client, **query) -> dict:
    """Ask the server about itself (the /introspect route of conftest.INTROSPECTION)."""
    client.send(json.dumps(query))
    while True:
        answer = json.loads(client.recv())
        if answer.get("op") != "broadcast":
            return answer


def presence(user_id: int, status: str) -> dict:
    """The doc's presence broadcast."""
    return {"op": "broadcast", "type": "presence", "user_id": user_id, "status": status}


def room_presence(room: str, user_id: int, status: str) -> dict:
    """asok_green's room presence broadcast."""
    return {"op": "broadcast", "type": "room_presence", "room": room, "user_id": user_id, "status": status}


def join_error(room) -> dict:
    """The doc's answer to a refused join_room."""
    message = f"Unauthorized or invalid room join request for {room}"
    return {"op": "broadcast", "type": "error", "room": room, "message": message}


def joined(client: Client, room: str, user_id: int | None = None) -> None:
    """``join_room`` and wait until the server confirms (room presence, or presence_list for guests)."""
    client.send(op="join_room", room=room)
    if user_id is not None:
        client.expect(**room_presence(room, user_id, "joined"))
    else:
        client.send(op="get_presence", room=room)
        client.expect(type="presence_list", room=room)


# -- presence -------------------------------------------------------------------------


def test_get_presence_answers_presence_list_of_online_user_ids(connect, ids):
    watcher = connect()
    connect("bob", "/echo")
    watcher.expect(**presence(ids["bob"], "online"))
    watcher.send(op="get_presence")
    assert watcher.expect(type="presence_list") == {"op": "broadcast", "type": "presence_list", "users": [ids["bob"]]}


def test_presence_is_counted_across_tabs_and_paths(server, connect, ids):
    probe = ws_connect(server, "/introspect")
    watcher, notified = connect(), connect(path="/notifications")
    notified.expect(text="Connected to notification stream")
    first = connect("alice", "/echo")
    assert watcher.expect(type="presence") == presence(ids["alice"], "online")
    notified.expect(**presence(ids["alice"], "online"))
    second = connect("alice", "/asok/live")
    info = introspect(probe, users=[ids["alice"]])
    assert info["online"] == [ids["alice"]] and info["is_online"] == {str(ids["alice"]): True}
    first.close()
    wait_for_connections(server, 4)  # probe, watcher, notified, second
    watcher.silent(type="presence")
    assert introspect(probe, users=[ids["alice"]])["is_online"] == {str(ids["alice"]): True}
    second.close()
    assert watcher.expect(type="presence") == presence(ids["alice"], "offline")
    notified.expect(**presence(ids["alice"], "offline"))
    info = introspect(probe, users=[ids["alice"]])
    assert info["online"] == [] and info["is_online"] == {str(ids["alice"]): False}
    probe.close()


def test_guests_are_never_announced(server, connect):
    watcher = connect()
    connect()
    connect(path="/echo").close()
    wait_for_connections(server, 2)
    watcher.silent(type="presence")


# -- rooms ------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["closed:vault", "has space", "", "x" * 201, 42, None])
def test_refused_join_room_gets_the_doc_error_payload(connect, room):
    client = connect("bob")
    client.send(op="join_room", room=room)
    assert client.expect(type="error") == join_error(room)
    client.send(op="get_presence")
    client.expect(type="presence_list")


def test_room_authorizer_decides_who_joins(connect, ids):
    bob, alice = connect("bob"), connect("alice")
    bob.send(op="join_room", room="admin:secrets")
    assert bob.expect(type="error") == join_error("admin:secrets")
    joined(alice, "admin:secrets", ids["alice"])


def test_model_rooms_are_checked_against_the_user_as_asok_does(connect, ids):
    bob, alice, guest = connect("bob"), connect("alice"), connect()
    for room in (f"model:User:{ids['alice']}", "model:User", "model:Post:1"):
        bob.send(op="join_room", room=room)
        assert bob.expect(type="error") == join_error(room)
    guest.send(op="join_room", room=f"model:User:{ids['bob']}")
    assert guest.expect(type="error") == join_error(f"model:User:{ids['bob']}")
    joined(bob, f"model:User:{ids['bob']}", ids["bob"])
    joined(alice, "model:User", ids["alice"])


def test_leave_room_stops_room_messages(connect, ids):
    alice, bob = connect("alice"), connect("bob")
    joined(alice, "chat:leave", ids["alice"])
    joined(bob, "chat:leave", ids["bob"])
    bob.send(op="leave_room", room="chat:leave")
    alice.expect(**room_presence("chat:leave", ids["bob"], "left"))
    alice.send(op="typing", room="chat:leave", typing=True)
    alice.handled()  # in order: the typing went out before this answer
    bob.silent(type="typing")


# -- typing and receipts ------------------------------------------------------------------


def test_typing_reaches_the_other_members_with_user_id(connect, ids):
    alice, bob, guest, outsider = connect("alice"), connect("bob"), connect(), connect()
    joined(alice, "chat:t", ids["alice"])
    joined(bob, "chat:t", ids["bob"])
    joined(guest, "chat:t")
    for typing in (True, False):
        bob.send(op="typing", room="chat:t", typing=typing)
        expected = {"op": "broadcast", "type": "typing", "room": "chat:t", "user_id": ids["bob"], "typing": typing}
        assert alice.expect(type="typing") == expected
        assert guest.expect(type="typing") == expected
    bob.silent(type="typing")
    outsider.silent(type="typing")


def test_receipt_reaches_the_other_members_with_user_id(connect, ids):
    alice, bob = connect("alice"), connect("bob")
    joined(alice, "chat:r", ids["alice"])
    joined(bob, "chat:r", ids["bob"])
    alice.send(op="receipt", room="chat:r", message_id=123, status="read")
    assert bob.expect(type="receipt") == {
        "op": "broadcast",
        "type": "receipt",
        "room": "chat:r",
        "message_id": 123,
        "user_id": ids["alice"],
        "status": "read",
    }
    alice.silent(type="receipt")


def test_typing_and_receipts_from_non_members_go_nowhere(connect, ids):
    alice, bob = connect("alice"), connect("bob")
    joined(alice, "chat:members", ids["alice"])
    joined(bob, "chat:elsewhere", ids["bob"])
    bob.send(op="typing", room="chat:members", typing=True)
    bob.send(op="receipt", room="chat:members", message_id=1, status="read")
    bob.handled()  # in order: whatever they sent went out before this answer
    alice.silent(type="typing")
    alice.silent(type="receipt")


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "invalid JSON"),
        ('{"op": "fly"}', "unknown op: fly"),
        ("[1, 2]", 'a message needs an "op" string'),
        ('{"op": 5}', 'a message needs an "op" string'),
        ('{"room": "x"}', 'a message needs an "op" string'),
    ],
)
def test_bad_message_gets_op_error_and_the_connection_stays_open(connect, raw, message):
    client = connect("alice")
    client.ws.send(raw)
    assert client.expect(op="error") == {"op": "error", "message": message}
    client.send(op="get_presence")
    client.expect(type="presence_list")


def test_binary_message_gets_op_error(connect):
    client = connect()
    client.ws.send_binary(b'{"op": "get_presence"}')
    assert client.expect(op="error") == {"op": "error", "message": "binary messages are not supported on /asok/live"}


# -- the server-side API --------------------------------------------------------------------


def test_conn_join_leave_and_broadcast_to_from_a_page(server, connect, ids):
    api, live = connect("bob", "/rooms"), connect("alice")
    api.ws.send("join chat:api")
    assert api.expect(joined=True) == {"joined": True, "rooms": ["chat:api"]}
    joined(live, "chat:api", ids["alice"])
    assert fetch(f"{server.url}/shout?room=chat:api&msg=hello").text == "2"
    api.expect(text="hello")
    live.expect(text="hello")
    api.ws.send("leave chat:api")
    assert api.expect(joined=None) == {"joined": None, "rooms": []}
    assert fetch(f"{server.url}/shout?room=chat:api&msg=again").text == "1"
    api.ws.send("join closed:api")  # answered after whatever the shout sent this client
    assert api.silent(until={"joined": False}, text="again") == {"joined": False, "rooms": []}


# -- room presence (asok_green's extension) -------------------------------------------------


def test_room_presence_is_announced_once_per_user_across_tabs_and_paths(connect, ids):
    room = "chat:rp"
    alice = connect("alice")
    joined(alice, room, ids["alice"])
    bob = connect("bob")
    bob.send(op="join_room", room=room)
    assert alice.expect(type="room_presence") == room_presence(room, ids["bob"], "joined")
    assert bob.expect(type="room_presence") == room_presence(room, ids["bob"], "joined")
    alice_tab = connect("alice", "/rooms")
    alice_tab.ws.send(f"join {room}")
    alice_tab.expect(joined=True)
    guest = connect()
    joined(guest, room)
    bob.send(op="get_presence", room=room)
    answer = bob.expect(type="presence_list")
    assert answer == {"op": "broadcast", "type": "presence_list", "room": room, "users": answer["users"]}
    assert sorted(answer["users"]) == sorted([ids["alice"], ids["bob"]])
    alice_tab.ws.send(f"leave {room}")
    alice_tab.expect(joined=None)
    bob.silent(type="room_presence")
    alice.send(op="leave_room", room=room)
    assert bob.expect(type="room_presence") == room_presence(room, ids["alice"], "left")
    bob.send(op="get_presence", room=room)
    assert bob.expect(type="presence_list")["users"] == [ids["bob"]]


def test_closing_a_connection_leaves_its_rooms(connect, ids):
    alice, bob = connect("alice"), connect("bob")
    for room in ("chat:one", "chat:two"):
        joined(alice, room, ids["alice"])
        joined(bob, room, ids["bob"])
    alice.close()
    assert bob.expect(room="chat:one", type="room_presence") == room_presence("chat:one", ids["alice"], "left")
    assert bob.expect(room="chat:two", type="room_presence") == room_presence("chat:two", ids["alice"], "left")
    bob.expect(**presence(ids["alice"], "offline"))
    bob.send(op="get_presence", room="chat:one")
    assert bob.expect(type="presence_list")["users"] == [ids["bob"]]


def test_room_presence_list_is_for_members_only(connect):
    client = connect("bob")
    client.send(op="get_presence", room="chat:private")
    assert client.expect(type="error") == {
        "op": "broadcast",
        "type": "error",
        "room": "chat:private",
        "message": "Join room chat:private before asking who is in it",
    }


# -- Asok's live components and model events, on the same socket ------------------------------


def counter_on_page(server, cookies=None) -> tuple[str, str, str]:
    """GET /counter; returns the page and the embedded component's cid and signed state."""
    page = fetch(f"{server.url}/counter", cookies=cookies)
    assert page.status == 200, page.text
    found = COMPONENT.search(page.text)
    assert found, page.text
    return page.text, found.group(1), html.unescape(found.group(2))


def rendered_count(render: dict) -> int:
    assert render["op"] == "render" and render["name"] == "Counter"
    return int(re.search(r"<output>(\d+)</output>", render["html"]).group(1))


def test_counter_component_updates_over_the_socket(server, connect):
    page, cid, state = counter_on_page(server)
    assert "<output>0</output>" in page and "/asok/live" in page
    client = connect()
    client.send(op="join", cid=cid, name="Counter", state=state)
    client.send(op="call", cid=cid, method="increment")
    render = client.expect(op="render", cid=cid)
    assert rendered_count(render) == 1 and render["state"] == {"count": 1, "step": 1}
    client.send(op="sync", cid=cid, prop="step", val=5)
    assert client.expect(op="render", cid=cid)["state"] == {"count": 1, "step": 5}
    client.send(op="call", cid=cid, method="increment")
    assert rendered_count(client.expect(op="render", cid=cid)) == 6


def test_counter_state_is_kept_in_the_session(server, connect, cookies):
    _, cid, state = counter_on_page(server, cookies["bob"])
    client = connect("bob")
    client.send(op="join", cid=cid, name="Counter", state=state)
    assert rendered_count(client.expect(op="render", cid=cid)) == 0
    client.send(op="call", cid=cid, method="increment")
    assert rendered_count(client.expect(op="render", cid=cid)) == 1
    page, _, _ = counter_on_page(server, cookies["bob"])
    assert "<output>1</output>" in page


def test_component_errors_are_op_error_and_the_socket_stays_open(connect):
    client = connect()
    client.send(op="call", cid="nobody", method="increment")
    error = client.expect(op="error")
    assert error["cid"] == "nobody" and error["message"]
    client.send(op="join", cid="x" * 101, name="Counter", state="{}")
    assert client.expect(op="error") == {"op": "error", "message": "invalid component id"}
    client.send(op="get_presence")
    client.expect(type="presence_list")


def test_private_component_method_is_refused(server, connect):
    _, cid, state = counter_on_page(server)
    client = connect()
    client.send(op="join", cid=cid, name="Counter", state=state)
    client.send(op="call", cid=cid, method="reset")
    assert "not decorated with @exposed" in client.expect(op="error", cid=cid)["message"]


def test_model_save_reaches_model_room_subscribers(server, connect, cookies, ids):
    owner, admin, guest = connect("bob"), connect("alice"), connect()
    joined(owner, f"model:User:{ids['bob']}", ids["bob"])
    joined(admin, "model:User", ids["alice"])
    assert fetch(f"{server.url}/touch", cookies=cookies["bob"]).text == "saved"
    event = {"op": "model_event", "event": "updated", "model": "User", "id": ids["bob"]}
    assert owner.expect(op="model_event") == event
    assert admin.expect(op="model_event") == event
    guest.silent(op="model_event")


# -- the hub's room state, in process -----------------------------------------------------------


@pytest.fixture
def hub():
    """A WebSocketServer in this process whose authorizer allows every room."""
    ws = WebSocketServer()
    ws.room_authorizer(lambda conn, room: True)
    yield ws
    hub_module._INSTANCES.remove(ws)


@pytest.fixture
def attach(hub):
    """Register a connection of ``user_id`` (over a socket pair) with the hub."""
    pairs = []

    def attach(user_id=None) -> Connection:
        a, b = gevent.socket.socketpair()
        pairs.append((a, b))
        user = SimpleNamespace(id=user_id) if user_id is not None else None
        conn = Connection(hub, a, ("127.0.0.1", 1), "/asok/live", {}, user=user)
        hub.register(conn)
        return conn

    yield attach
    for a, b in pairs:
        a.close()
        b.close()


def test_authorizer_that_yields_while_the_connection_goes_leaves_no_trace(hub, attach):
    conn = attach(user_id=9)

    @hub.room_authorizer
    def slow(conn, room):
        gevent.sleep(0.01)
        return True

    joining = gevent.spawn(conn.join, "r")
    gevent.sleep(0)
    hub.unregister(conn)
    assert joining.get(timeout=1) is False
    assert hub.state.room_members("r") == [] and hub.get_room_users("r") == []


def test_leave_after_disconnect_does_not_count_twice(hub, attach):
    first, second = attach(user_id=5), attach(user_id=5)
    first.join("r")
    second.join("r")
    first.join("r")
    hub.unregister(first)
    assert first.rooms == {"r"}
    first.leave("r")
    assert hub.get_room_users("r") == [5]
    second.leave("r")
    assert hub.get_room_users("r") == [] and hub.state.room_members("r") == []
