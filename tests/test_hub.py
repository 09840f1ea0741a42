"""The hub's shared state: presence counts, rooms, broadcast, slow consumers.

Real ``Connection`` objects over gevent socket pairs: what the hub writes is read
back from the other end of each pair, as a client would.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import gevent
import gevent.socket
import pytest

from asok_green.api.websocket_server import WebSocketServer
from asok_green.protocol.frames import CLOSE_POLICY, OP_CLOSE, OP_TEXT
from asok_green.server import hub as hub_module
from asok_green.server.connection import Connection
from asok_green.server.hub import is_valid_room_name
from tests.server_frames import close_code, parse_server_frames


class Peer:
    """The client end of a socket pair, reading what the server sent."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def frames(self, timeout: float = 1.0) -> list[tuple[int, bytes]]:
        received = []
        with gevent.Timeout(timeout, False):
            while True:
                self.sock.settimeout(0.02)
                try:
                    chunk = self.sock.recv(1 << 20)
                except (TimeoutError, OSError):
                    if received or not self.buffer:
                        break
                    continue
                if not chunk:
                    break
                self.buffer += chunk
                frames, self.buffer = parse_server_frames(self.buffer)
                received.extend(frames)
        return received

    def texts(self) -> list[str]:
        return [p.decode() for op, p in self.frames() if op == OP_TEXT]


@pytest.fixture
def server():
    ws = WebSocketServer(max_queue=64 * 1024, close_timeout=30)
    yield ws
    hub_module._INSTANCES.remove(ws)


@pytest.fixture
def connect(server):
    made = []

    def connect(path="/chat", user_id=None) -> tuple[Connection, Peer]:
        a, b = gevent.socket.socketpair()
        user = SimpleNamespace(id=user_id) if user_id is not None else None
        conn = Connection(server, a, ("127.0.0.1", 1), path, {}, user=user)
        server.register(conn)
        made.append((a, b))
        return conn, Peer(b)

    yield connect
    for a, b in made:
        a.close()
        b.close()


def presence(texts):
    return [(m["user_id"], m["status"]) for m in map(json.loads, texts) if m.get("type") == "presence"]


def test_first_connection_of_a_user_announces_online(connect):
    watcher, peer = connect()
    connect(user_id=42)
    assert presence(peer.texts()) == [(42, "online")]


def test_second_tab_says_nothing_and_last_tab_says_offline(server, connect):
    watcher, peer = connect()
    tab1, _ = connect(user_id=7)
    tab2, _ = connect(user_id=7)
    server.unregister(tab1)
    assert server.is_user_online(7)
    server.unregister(tab2)
    assert not server.is_user_online(7)
    assert presence(peer.texts()) == [(7, "online"), (7, "offline")]
    assert server.get_online_users() == []


def test_unregister_twice_counts_once(server, connect):
    a, _ = connect(user_id=1)
    connect(user_id=1)
    server.unregister(a)
    server.unregister(a)
    assert server.is_user_online(1)


def test_broadcast_reaches_path_members_except_excluded(server, connect):
    sender, sender_peer = connect("/chat")
    _, other_peer = connect("/chat")
    _, elsewhere_peer = connect("/news")
    assert server.broadcast("/chat", "hello", exclude=sender) == 1
    assert other_peer.texts() == ["hello"]
    assert sender_peer.texts() == []
    assert elsewhere_peer.texts() == []


def test_broadcast_json_encodes_once_for_every_recipient(server, connect, monkeypatch):
    peers = [connect("/chat")[1] for _ in range(20)]
    calls = []
    real_dumps = json.dumps
    monkeypatch.setattr(hub_module.json, "dumps", lambda obj: calls.append(obj) or real_dumps(obj))
    assert server.broadcast_json("/chat", {"n": 1}) == 20
    assert len(calls) == 1
    assert all(p.texts() == ['{"n": 1}'] for p in peers)


def test_room_join_needs_authorizer_except_model_rooms(server, connect):
    conn, _ = connect()
    assert not conn.join("general")
    assert conn.join("model:Post")
    server.room_authorizer(lambda c, room: room != "secret")
    assert conn.join("general")
    assert not conn.join("secret")
    assert conn.rooms == {"general", "model:Post"}


def test_authorizer_that_raises_denies(server, connect):
    conn, _ = connect()

    @server.room_authorizer
    def broken(conn, room):
        raise ValueError("db down")

    assert not conn.join("general")


@pytest.mark.parametrize("room", ["", "a" * 201, "has space", "semi;colon", None, 5])
def test_invalid_room_names_are_refused(room):
    assert not is_valid_room_name(room)


def test_broadcast_to_room_and_cleanup_on_unregister(server, connect):
    server.room_authorizer(lambda c, r: True)
    a, a_peer = connect()
    b, b_peer = connect()
    a.join("r1")
    b.join("r1")
    assert server.broadcast_to("r1", "x", exclude=a) == 1
    assert b_peer.texts() == ["x"]
    server.unregister(b)
    assert server.state.room_members("r1") == [a]
    a.leave("r1")
    assert server.state.room_members("r1") == []


def test_on_disconnect_reads_the_rooms_the_connection_left_by_closing(server, connect):
    from asok_green.server.lifecycle import end_connection

    seen = []
    server.room_authorizer(lambda c, r: True)

    @server.on_disconnect("/chat")
    def gone(conn):
        seen.append((conn.rooms, server.state.room_members("r1"), server.state.room_members("r2")))

    conn, _ = connect()
    conn.join("r1")
    conn.join("r2")
    end_connection(server, conn, server.match("/chat")[0])
    assert seen == [({"r1", "r2"}, [], [])]


def test_slow_consumer_is_closed_with_1008_and_others_get_everything(server, connect):
    stuck, stuck_peer = connect()
    _, reader = connect()
    message = "x" * 4096
    got = []
    for _ in range(200):
        server.broadcast("/chat", message)
        got.extend(reader.texts())
    assert len(got) == 200
    assert stuck.closed
    assert server.stats["slow_consumers_closed"] == 1
    frames = stuck_peer.frames()
    assert frames[-1][0] == OP_CLOSE and close_code(frames[-1][1]) == CLOSE_POLICY


def room_presence(texts):
    return [(m["room"], m["user_id"], m["status"]) for m in map(json.loads, texts) if m.get("type") == "room_presence"]


def test_what_other_nodes_hold_is_announced_to_local_clients(server, connect):
    server.room_authorizer(lambda c, r: True)
    member, peer = connect(user_id=1)
    member.join("r")
    peer.texts()
    server.node_synced("B", [5], [("r", 5)])
    texts = peer.texts()
    assert presence(texts) == [(5, "online")] and room_presence(texts) == [("r", 5, "joined")]
    assert server.get_room_users("r") == [1, 5] and server.get_online_users() == [1, 5]
    server.node_added("never-synced", users=[6], room_users=[("r", 6)])
    server.node_down("B")
    texts = peer.texts()
    assert room_presence(texts) == [("r", 5, "left")] and presence(texts) == [(5, "offline")]
    assert server.get_room_users("r") == [1] and not server.is_user_online(6)


def test_a_user_in_a_room_on_another_node_is_not_announced_again_here(server, connect):
    server.room_authorizer(lambda c, r: True)
    watcher, peer = connect(user_id=1)
    watcher.join("r")
    server.node_synced("B", [7], [("r", 7)])
    peer.texts()
    tab, _ = connect(user_id=7)
    tab.join("r")
    server.unregister(tab)
    texts = peer.texts()
    assert presence(texts) == [] and room_presence(texts) == []
    assert server.get_room_users("r") == [1, 7]
