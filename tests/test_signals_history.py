"""Signals are not history: typing indicators and read receipts reach a room's members live, and never its history.

A room whose history keeps 5 messages gets 3 real ones, then a flood of
typing and receipts: a v1 client that joins afterwards is told the stream
stands at offset 3, and one resuming from the start gets the 3 messages. The
same holds across the nodes of a Redis cluster whose history is kept by each
node (the SQLite store, a file per node): a signal relayed by another node is
delivered live there too, not added to that node's history.
"""

from __future__ import annotations

import json

import pytest

from tests.asok_project import make_project
from tests.cluster_support import node_env
from tests.conftest import asok_serve, ws_connect
from tests.v1_client import V1Client, payload, stream_messages

SIGNALS_APP = """
ws.keep_history("room:sig-*", size=5)


@ws.room_authorizer
def allow_every_room(conn, room):
    return True


@ws.on("/say")
def say(conn, message):
    room, text = message.split(" ", 1)
    ws.broadcast_to(room, text)
    conn.send("done")
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project whose ``sig-*`` rooms keep 5 messages of history."""
    return make_project(tmp_path_factory.mktemp("signals-project"), extra_wsgi=SIGNALS_APP)


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """One process serving the project."""
    proc = asok_serve(project, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


@pytest.fixture
def nodes(project, redis_server, tmp_path):
    """Two nodes of a Redis cluster, each keeping its history in a SQLite file of its own."""
    started = []
    try:
        for name in ("a", "b"):
            env = node_env(redis_server, WS_HISTORY_STORE="sqlite", WS_HISTORY_PATH=str(tmp_path / f"{name}.sqlite3"))
            started.append(asok_serve(project, tmp_path, env=env))
            started[-1].wait_for_log("joined the cluster")
        yield started
    finally:
        for node in started:
            node.stop()


def test_a_typing_flood_does_not_push_messages_out_of_a_rooms_history(server):
    signals_flood_a_room(server, server, "sig-a")


def test_signals_relayed_by_another_node_stay_out_of_its_history(nodes):
    first, second = nodes
    signals_flood_a_room(first, second, "sig-b")


def signals_flood_a_room(typing_node, watching_node, room: str) -> None:
    """3 messages said to ``room`` on the watching node, 100 signals typed on the typing node: 3 in every history."""
    watcher, typist = ws_connect(watching_node, "/asok/live"), ws_connect(typing_node, "/asok/live")
    sayer = ws_connect(watching_node, "/say")
    try:
        for client in (watcher, typist):
            client.send(json.dumps({"op": "join_room", "room": room}))
            # Ops are handled in order: once get_presence is answered, the join is done.
            client.send(json.dumps({"op": "get_presence", "room": room}))
            assert json.loads(client.recv())["type"] == "presence_list"
        for text in ("one", "two", "three"):
            sayer.send(f"{room} {text}")
            assert sayer.recv() == "done"
        assert [watcher.recv() for _ in range(3)] == ["one", "two", "three"]
        assert [typist.recv() for _ in range(3)] == ["one", "two", "three"]  # on its node too, and so in its history
        for i in range(50):
            typist.send(json.dumps({"op": "typing", "room": room, "typing": i % 2 == 0}))
            typist.send(json.dumps({"op": "receipt", "room": room, "message_id": i}))
        signals = [json.loads(watcher.recv()) for _ in range(100)]
        assert [s["type"] for s in signals[:2]] == ["typing", "receipt"]  # delivered live all the same
        for node in {typing_node, watching_node}:
            assert history_of(node, room) == ["one", "two", "three"]
    finally:
        for client in (watcher, typist, sayer):
            client.close()


def history_of(node, room: str) -> list[str]:
    """What ``node`` keeps of ``room``: a v1 client told where it stands, then resuming from the start."""
    late = V1Client(node.ws_url, "/asok/live")
    try:
        late.send(json.dumps({"op": "join_room", "room": room}))
        position = late.until(lambda f: f.get("asok") == "position")[-1]
        assert position["o"] == 3, position
        late.send(json.dumps({"op": "leave_room", "room": room}))
        late.send(json.dumps({"op": "join_room", "room": room, "since": {"e": position["e"], "o": 0}}))
        frames = late.until(lambda f: f.get("asok") in ("resumed", "continuity_lost"))
        assert frames[-1]["asok"] == "resumed"
        return [payload(f) for f in stream_messages(frames)]
    finally:
        late.close()
