"""Names are leased, not owned: a room, path or stream nobody uses any more is let go, its history kept in the store.

Real connections over gevent socket pairs on an in-process server with
history for every room and for ``/feed/[topic]``: after a storm of new names
joined and left, the server's tables (the hub's state, the history's streams,
lookups, tails and the store's per-stream entries, read through their public
views) are back to their size before. And a connection may be in only so many
rooms at once.
"""

from __future__ import annotations

import json

import gevent
import gevent.socket
import pytest

from asok_green.api.websocket_server import WebSocketServer
from asok_green.bridge import live
from asok_green.history.memory_store import MemoryStore
from asok_green.protocol.envelopes import Since
from asok_green.server import hub as hub_module
from asok_green.server.connection import OPEN, V1Connection
from tests.server_frames import parse_server_frames

pytestmark = pytest.mark.quick

#: Bytes of history the server may hold in memory.
BUDGET = 64 * 1024


class Peer:
    """The client end of a socket pair: what the server wrote, decoded as JSON, read as it comes."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.sock.setblocking(False)

    def drain(self) -> list[dict]:
        """Every frame the server wrote so far."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buffer += chunk
        frames, self.buffer = parse_server_frames(self.buffer)
        return [json.loads(payload) for _, payload in frames]


@pytest.fixture(params=["memory", "sqlite"])
def server(request, tmp_path, monkeypatch):
    """A server whose rooms and /feed/* paths keep history, in the memory or the SQLite store."""
    monkeypatch.setenv("WS_HISTORY_STORE", request.param)
    monkeypatch.setenv("WS_HISTORY_PATH", str(tmp_path / "history.sqlite3"))
    ws = WebSocketServer(max_rooms_per_connection=3, history_memory=BUDGET)
    ws.store_name = request.param
    ws.on("/feed/[topic]")(lambda conn, message: None)
    ws.keep_history("/feed/[topic]", size=20)
    ws.keep_history("room:*", size=20)
    ws.room_authorizer(lambda conn, room: True)
    pairs = []

    def connect(path: str) -> tuple[V1Connection, Peer]:
        a, b = gevent.socket.socketpair()
        pairs.append((a, b))
        conn = V1Connection(ws, a, ("127.0.0.1", 1), path, {})
        assert ws.register(conn)
        return conn, Peer(b)

    ws.connect = connect
    yield ws
    ws.history.stop()
    for a, b in pairs:
        a.close()
        b.close()
    hub_module._INSTANCES.remove(ws)


def tables(ws: WebSocketServer) -> dict:
    """The size of every table the server keeps per name, from the public views."""
    state = ws.state
    return {
        **ws.history.table_sizes(),
        "paths": len(state.connections()),
        "rooms": len(state.known_rooms()),
        "room users": len(state.held_room_users()),
    }


def test_a_storm_of_new_rooms_and_paths_leaves_the_tables_as_they_were(server):
    guest, peer = server.connect("/asok/live")
    before = tables(server)
    positions = 0
    for i in range(300):
        room = f"storm-{i}"
        assert guest.join(room)
        if i % 3 == 0:
            server.broadcast_to(room, f"message {i}")  # some rooms have history to keep
        guest.leave(room)
        gevent.sleep(0)
        positions += sum(1 for f in peer.drain() if f.get("asok") == "position")
    assert positions == 300  # each join was answered with its room stream's position
    for i in range(100):
        conn, _ = server.connect(f"/feed/storm-{i}")
        server.broadcast(f"/feed/storm-{i}", "hello")
        server.unregister(conn)
    for i in range(50):
        conn, _ = server.connect("/asok/live")
        assert conn.join(f"closing-{i}") and conn.join("closing-shared")
        server.unregister(conn)  # closing leaves its rooms
    server.broadcast_to("nobody-here", "to a room nobody is in")
    after = tables(server)
    if server.store_name == "memory":
        # History that outlives its subscribers is the memory store's to keep, within the one budget.
        assert after["tail_bytes"] <= BUDGET
        held = ("store", "tails", "tail_bytes")
        after = {k: v for k, v in after.items() if k not in held}
        before = {k: v for k, v in before.items() if k not in held}
    assert after == before


def test_history_outlives_its_subscribers_in_the_store(server):
    guest, peer = server.connect("/asok/live")
    assert guest.join("kept")
    position = peer.drain()[-1]
    server.broadcast_to("kept", "one")
    server.broadcast_to("kept", "two")
    guest.leave("kept")
    assert server.history.table_sizes()["streams"] == 0
    peer.drain()
    server.join_room(guest, "kept", Since(position["e"], 0))
    frames = peer.drain()
    assert [f.get("d") for f in frames if "o" in f and "asok" not in f] == ["one", "two"]
    assert frames[-1]["asok"] == "resumed"


def test_in_memory_history_shares_one_budget_and_forgets_streams_nobody_uses(server):
    for i in range(200):
        server.broadcast_to(f"unwatched-{i}", "x" * 1000)
    sizes = server.history.table_sizes()
    assert sizes["tail_bytes"] <= BUDGET
    assert sizes["streams"] == 0
    # The memory store keeps what fits the budget (and nothing about the streams it let go).
    assert sizes["store"] < 100


def test_a_connection_in_too_many_rooms_gets_an_error_frame_and_stays_open(server):
    guest, peer = server.connect("/asok/live")
    for room in ("a", "b", "c", "d"):
        live.on_live_message(guest, json.dumps({"op": "join_room", "room": room}))
    errors = [json.loads(f["d"]) for f in peer.drain() if "d" in f and "asok" not in f]
    assert len(errors) == 1 and errors[0]["type"] == "error" and errors[0]["room"] == "d"
    assert "Too many rooms" in errors[0]["message"] and "3 rooms" in errors[0]["message"]
    assert guest.rooms == {"a", "b", "c"} and guest.state is OPEN
    assert not guest.join("d")  # the app's own joins are held to it too
    live.on_live_message(guest, json.dumps({"op": "leave_room", "room": "a"}))
    live.on_live_message(guest, json.dumps({"op": "join_room", "room": "d"}))
    assert guest.rooms == {"b", "c", "d"}


class LateStore(MemoryStore):
    """The memory store giving offsets later, as a store across the network (Redis) does."""

    def __init__(self):
        super().__init__()
        self.due = []

    def publish(self, stream, opcode, data, deliver):
        super().publish(stream, opcode, data, lambda epoch, offset: self.due.append((deliver, epoch, offset)))

    def answer(self):
        due, self.due = self.due, []
        for deliver, epoch, offset in due:
            deliver(epoch, offset)


def test_a_stream_let_go_before_its_offset_came_keeps_nothing_when_it_comes(server):
    server.history.store = store = LateStore()
    for i in range(50):
        server.broadcast_to(f"late-{i}", "x")
    store.answer()
    sizes = server.history.table_sizes()
    assert (sizes["streams"], sizes["lookups"], sizes["tails"], sizes["tail_bytes"]) == (0, 0, 0, 0)
