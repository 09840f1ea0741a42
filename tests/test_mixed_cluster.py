"""A migration in progress: Asok's threaded server and asok_green nodes on one Redis share broadcasts.

An Asok 0.8 ``WebSocketServer`` with its ``RedisWebSocketAdapter`` (in a process
of its own) and two asok_green nodes of the module's Redis. What carries over,
both ways: path broadcasts (text and JSON) and room broadcasts, each delivered
once per client. What does not (the README says so): presence counts, history,
binary payloads (Asok's clients get the envelope's base64 text).
"""

from __future__ import annotations

import base64
import json
import sys

import pytest
import websocket

from tests.asok_project import make_project, project_env
from tests.cluster_support import recv_json, recv_texts
from tests.conftest import INTROSPECTION, ServerProcess, free_port, wait_until

pytestmark = pytest.mark.timeout(60)

ASOK_SERVER = """
import sys, time
from asok.ws.adapter import RedisWebSocketAdapter
from asok.ws.server import WebSocketServer

port, url = int(sys.argv[1]), sys.argv[2]
ws = WebSocketServer(host="127.0.0.1", port=port, secret_key="k" * 32, adapter=RedisWebSocketAdapter(redis_url=url))


@ws.on("/mixed")
def on_mixed(conn, message):
    ws.broadcast_json("/mixed", {"from": "asok", "text": message})


@ws.room_authorizer
def allow(conn, room):
    return True


@ws.on("/member")
def on_member(conn, message):
    conn.send("joined" if conn.join("mixed-team") else "refused")


@ws.on("/to-team")
def on_to_team(conn, message):
    ws.broadcast_to("mixed-team", "asok to team: " + message)


ws.start()
print("ready", flush=True)
while True:
    time.sleep(1)
"""

GREEN_ROUTES = """


@ws.on("/mixed")
def green_mixed(conn, message):
    if message == "binary":
        ws.broadcast("/mixed", b"\\x00\\x01bin")
    else:
        ws.broadcast_json("/mixed", {"from": "green", "text": message})


@ws.on("/to-team")
def green_to_team(conn, message):
    ws.broadcast_to("mixed-team", "green to team: " + message)
"""


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, start_nodes):
    """Two asok_green nodes of the module's Redis."""
    project = make_project(tmp_path_factory.mktemp("mixed-project"), extra_wsgi=INTROSPECTION + GREEN_ROUTES)
    return start_nodes(project, 2)


@pytest.fixture(scope="module")
def asok_server(redis_server, tmp_path_factory):
    """Asok's own threaded server on the same Redis, subscribed before the tests use it."""
    folder = tmp_path_factory.mktemp("asok-server")
    script = folder / "asok_server.py"
    script.write_text(ASOK_SERVER)
    port = free_port()
    patterns = int(redis_server.command("PUBSUB", "NUMPAT")[1:])
    server = ServerProcess(
        [sys.executable, str(script), str(port), redis_server.url], folder, project_env(), port, folder / "asok.log"
    )
    try:
        wait_until(lambda: int(redis_server.command("PUBSUB", "NUMPAT")[1:]) > patterns, what="Asok subscribed")
        yield server
    finally:
        server.stop()


def asok_client(server, path: str, clients):
    """A client of Asok's server, closed with the test's clients."""
    client = websocket.create_connection(f"{server.ws_url}{path}", origin=server.url, timeout=5)
    clients.opened.append(client)
    return client


def test_path_broadcasts_reach_both_kinds_of_server_once(nodes, asok_server, clients):
    a, b = nodes
    theirs = asok_client(asok_server, "/mixed", clients)
    ours_a, ours_b = clients.connect(a, "/mixed"), clients.connect(b, "/mixed")

    ours_a.send("hello from a")
    expected = {"from": "green", "text": "hello from a"}
    for client in (theirs, ours_a, ours_b):
        assert json.loads(recv_texts(client, 1)[0]) == expected

    theirs.send("hello from asok")
    expected = {"from": "asok", "text": "hello from asok"}
    for client in (theirs, ours_a, ours_b):
        assert json.loads(recv_texts(client, 1)[0]) == expected
    # Once each: the next message each gets is the next broadcast, not a copy.
    ours_b.send("second")
    for client in (theirs, ours_a, ours_b):
        assert json.loads(recv_texts(client, 1)[0])["text"] == "second"


def test_room_broadcasts_cross_both_ways(nodes, asok_server, clients):
    a, b = nodes
    member = asok_client(asok_server, "/member", clients)
    member.send("join")
    assert recv_texts(member, 1) == ["joined"]
    ours = clients.connect(b, "/asok/live")
    ours.send(json.dumps({"op": "join_room", "room": "mixed-team"}))
    # Answered in order: once the presence list is back, the join is done.
    ours.send(json.dumps({"op": "get_presence"}))
    recv_json(ours, lambda m: m.get("type") == "presence_list")
    sender = clients.connect(a, "/to-team")
    sender.send("hi")
    assert recv_texts(member, 1) == ["green to team: hi"]
    assert recv_texts(ours, 1) == ["green to team: hi"]

    asok_sender = asok_client(asok_server, "/to-team", clients)
    asok_sender.send("hey")
    assert recv_texts(member, 1) == ["asok to team: hey"]
    assert recv_texts(ours, 1) == ["asok to team: hey"]


def test_a_binary_broadcast_reaches_asoks_clients_as_the_envelopes_base64_text(nodes, asok_server, clients):
    a, _ = nodes
    theirs = asok_client(asok_server, "/mixed", clients)
    ours = clients.connect(a, "/mixed")
    ours.send("binary")
    assert ours.recv() == b"\x00\x01bin"
    assert recv_texts(theirs, 1) == [base64.b64encode(b"\x00\x01bin").decode()]
