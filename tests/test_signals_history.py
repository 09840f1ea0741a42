"""Signals are not history: typing indicators and read receipts reach a room's members live, and never its history.

A room whose history keeps 5 messages gets 3 real ones, then a flood of
typing and receipts: a v1 client that joins afterwards is told the stream
stands at offset 3, and one resuming from the start gets the 3 messages.
"""

from __future__ import annotations

import json

import pytest

from tests.asok_project import make_project
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
def server(tmp_path_factory):
    """A project whose ``sig-*`` rooms keep 5 messages of history."""
    project = make_project(tmp_path_factory.mktemp("signals-project"), extra_wsgi=SIGNALS_APP)
    proc = asok_serve(project, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


def test_a_typing_flood_does_not_push_messages_out_of_a_rooms_history(server):
    watcher, typist = ws_connect(server, "/asok/live"), ws_connect(server, "/asok/live")
    sayer = ws_connect(server, "/say")
    try:
        for client in (watcher, typist):
            client.send(json.dumps({"op": "join_room", "room": "sig-a"}))
            # Ops are handled in order: once get_presence is answered, the join is done.
            client.send(json.dumps({"op": "get_presence", "room": "sig-a"}))
            assert json.loads(client.recv())["type"] == "presence_list"
        for text in ("one", "two", "three"):
            sayer.send(f"sig-a {text}")
            assert sayer.recv() == "done"
        assert [watcher.recv() for _ in range(3)] == ["one", "two", "three"]
        for i in range(50):
            typist.send(json.dumps({"op": "typing", "room": "sig-a", "typing": i % 2 == 0}))
            typist.send(json.dumps({"op": "receipt", "room": "sig-a", "message_id": i}))
        signals = [json.loads(watcher.recv()) for _ in range(100)]
        assert [s["type"] for s in signals[:2]] == ["typing", "receipt"]  # delivered live all the same
        late = V1Client(server.ws_url, "/asok/live")
        late.send(json.dumps({"op": "join_room", "room": "sig-a"}))
        position = late.until(lambda f: f.get("asok") == "position")[-1]
        assert position["o"] == 3
        late.send(json.dumps({"op": "leave_room", "room": "sig-a"}))
        late.send(json.dumps({"op": "join_room", "room": "sig-a", "since": {"e": position["e"], "o": 0}}))
        frames = late.until(lambda f: f.get("asok") in ("resumed", "continuity_lost"))
        assert frames[-1]["asok"] == "resumed"
        assert [payload(f) for f in stream_messages(frames)] == ["one", "two", "three"]
        late.close()
    finally:
        for client in (watcher, typist, sayer):
            client.close()
