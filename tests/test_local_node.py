"""The restart channel's node, in one process: two hubs linked over a real Unix socket.

Real hubs and real ``Connection`` objects over gevent socket pairs (as in
tests/test_hub.py) stand for the old and the new process of a restart;
tests/test_restart_cluster.py drives the real processes. Also the channel's
frames (pure) and what a peer that stops reading does (nothing to the server).
"""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import gevent
import gevent.socket
import pytest

from asok_green.api.websocket_server import WebSocketServer
from asok_green.cluster import local_node as local_node_module
from asok_green.cluster import local_wire as wire
from asok_green.cluster.local_node import LocalNode
from asok_green.history.sqlite_store import SqliteStore
from asok_green.protocol import envelopes
from asok_green.protocol.frames import OP_BINARY, OP_TEXT
from asok_green.protocol.outgoing import Outgoing
from asok_green.server import hub as hub_module
from asok_green.server.connection import Connection, V1Connection
from tests.test_hub import Peer

pytestmark = [pytest.mark.quick, pytest.mark.timeout(30)]


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    """Let the loop run until ``predicate()``; AssertionError naming ``what`` after ``timeout`` seconds."""
    with gevent.Timeout(timeout, AssertionError(f"{what}: not true within {timeout}s")):
        while not predicate():
            gevent.sleep(0.01)


@pytest.fixture
def hubs():
    """Two hubs, as the old and the new process of a restart would hold them."""
    made = [WebSocketServer(max_queue=1 << 20, close_timeout=1), WebSocketServer(max_queue=1 << 20, close_timeout=1)]
    yield made
    for hub in made:
        hub.node.stop()
        hub_module._INSTANCES.remove(hub)


@pytest.fixture
def linked(hubs, tmp_path):
    """The two hubs' nodes, the first listening, the second linked to it."""
    old, new = hubs
    old.node = LocalNode(old, str(tmp_path / "old.sock"))
    old.node.start()
    new.node = LocalNode(new)
    assert new.node.connect(str(tmp_path / "old.sock"))
    wait_for(lambda: all(link.peer_id for hub in hubs for link in hub.node.links), "both hellos read")
    return old.node, new.node


@pytest.fixture
def connect():
    made = []

    def connect(hub, path="/chat", user_id=None, v1=False) -> tuple[Connection, Peer]:
        a, b = gevent.socket.socketpair()
        user = SimpleNamespace(id=user_id) if user_id is not None else None
        conn = (V1Connection if v1 else Connection)(hub, a, ("127.0.0.1", 1), path, {}, user=user)
        hub.register(conn)
        made.append((a, b))
        return conn, Peer(b)

    yield connect
    for a, b in made:
        a.close()
        b.close()


def texts_until(peer: Peer, count: int, timeout: float = 5.0) -> list[str]:
    """Text messages ``peer`` receives until there are ``count`` of them."""
    got: list[str] = []
    with gevent.Timeout(timeout, False):
        while len(got) < count:
            got += peer.texts()
    return got


def test_a_broadcast_on_either_side_reaches_the_other_once(linked, hubs, connect):
    old, new = hubs
    _, on_old = connect(old)
    _, on_new = connect(new)
    old.broadcast("/chat", "from old")
    new.broadcast("/chat", "from new")
    old.broadcast_to("nobody", "to an empty room")
    assert texts_until(on_new, 2) == ["from new", "from old"]
    assert texts_until(on_old, 2) == ["from old", "from new"]
    new.broadcast("/chat", "marker")
    assert texts_until(on_old, 1) == ["marker"]  # nothing came back a second time before it
    assert texts_until(on_new, 1) == ["marker"]


def test_binary_and_room_broadcasts_cross_too(linked, hubs, connect):
    old, new = hubs
    conn, peer = connect(new)
    new.room_authorizer(lambda conn, room: True)
    assert new.join_room(conn, "general")
    old.broadcast_to("general", b"\x00\xffbytes")
    frames = []
    with gevent.Timeout(5, False):
        while not frames:
            frames = [(op, data) for op, data in peer.frames() if op == OP_BINARY]
    assert frames == [(OP_BINARY, b"\x00\xffbytes")]


def test_presence_is_shared_while_linked_and_goes_with_the_link(linked, hubs, connect):
    old, new = hubs
    conn, _ = connect(old, user_id=7)
    _, watcher = connect(new, user_id=8)
    wait_for(lambda: new.is_user_online(7), "user 7 (on the old side) online on the new side")
    assert 8 in old.get_online_users()
    # The user reconnects to the new side, then leaves the old one: never offline in between.
    connect(new, user_id=7)
    old.unregister(conn)
    wait_for(lambda: 7 not in old.state.local_users, "gone from the old side")
    old.node.stop()
    wait_for(lambda: not new.node.links, "the link closed")
    assert new.is_user_online(7)
    statuses = [(m["user_id"], m["status"]) for m in map(json.loads, watcher.texts()) if m.get("type") == "presence"]
    assert (7, "offline") not in statuses


def share_a_store(hubs, tmp_path, stream: str) -> None:
    """Both hubs keep ``stream``'s history in one SQLite file, and are linked again knowing it."""
    old, new = hubs
    for hub in hubs:
        hub.keep_history(stream, size=50)
        hub.history.store = SqliteStore(str(tmp_path / "history.sqlite3"))
    # The hellos were read before either kept history: link again, as processes that keep it from the start.
    old.node.stop()
    wait_for(lambda: not new.node.links, "the first link closed")
    old.node = LocalNode(old, str(tmp_path / "again.sock"))
    old.node.start()
    assert new.node.connect(str(tmp_path / "again.sock"))
    wait_for(lambda: all(link.shares_store for hub in hubs for link in hub.node.links), "the store is shared")


def test_a_stream_message_keeps_its_offset_across_a_shared_store(linked, hubs, connect, tmp_path):
    old, new = hubs
    share_a_store(hubs, tmp_path, "/feed")
    _, v1_peer = connect(new, "/feed", v1=True)
    position = json.loads(texts_until(v1_peer, 1)[0])
    assert position["asok"] == "position"
    _, plain_peer = connect(new, "/feed")
    for text in ("one", "two", "three"):
        old.broadcast("/feed", text)
    frames = [json.loads(text) for text in texts_until(v1_peer, 3)]
    first = position["o"] + 1
    assert [(f["o"], f["d"]) for f in frames] == [(first, "one"), (first + 1, "two"), (first + 2, "three")]
    assert texts_until(plain_peer, 3) == ["one", "two", "three"]
    new.broadcast("/feed", "four")
    assert [json.loads(text)["o"] for text in texts_until(v1_peer, 1)] == [first + 3]


def test_a_signal_from_the_peer_takes_no_place_in_a_shared_history(linked, hubs, connect, tmp_path):
    old, new = hubs
    share_a_store(hubs, tmp_path, "room:sig-*")
    for hub in hubs:
        hub.room_authorizer(lambda conn, room: True)
    member, peer = connect(new, "/asok/live", v1=True)
    assert new.join_room(member, "sig-1")
    old_member, _ = connect(old, "/asok/live")
    assert old.join_room(old_member, "sig-1")
    wait_for(lambda: any(m.get("asok") == "position" for m in map(json.loads, peer.texts())), "the room's position")
    position = new.history.room_stream("sig-1").last
    old.signal_room("sig-1", Outgoing.json({"type": "typing", "room": "sig-1"}), old_member)
    old.broadcast_to("sig-1", "a message")
    frames = [json.loads(text) for text in texts_until(peer, 2)]
    assert frames[0] == {"d": json.dumps({"type": "typing", "room": "sig-1"})}  # the signal, live: no offset
    assert (frames[1]["d"], frames[1]["o"]) == ("a message", position + 1)  # it took none in the shared file
    assert new.history.room_stream("sig-1").last == old.history.room_stream("sig-1").last == position + 1


def test_a_peer_that_stops_reading_never_blocks_the_server(hubs, connect, tmp_path, monkeypatch):
    monkeypatch.setattr(local_node_module, "SEND_TIMEOUT", 0.5)
    hub = hubs[0]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "stuck.sock"))
    listener.listen(1)
    hub.node = LocalNode(hub)
    assert hub.node.connect(str(tmp_path / "stuck.sock"))
    stuck, _ = listener.accept()  # accepted, never read
    _, local = connect(hub)
    payload = "x" * 65536
    with gevent.Timeout(5, AssertionError("a broadcast waited for the peer")):
        for _ in range(200):  # 12.5 MiB: far more than the socket buffers hold
            hub.broadcast("/elsewhere", payload)
    wait_for(lambda: not hub.node.links, "the stalled peer cut off")
    hub.broadcast("/chat", "still serving")
    assert texts_until(local, 1) == ["still serving"]
    stuck.close()
    listener.close()


def test_a_peer_whose_queue_fills_is_cut_off_at_once(hubs, tmp_path, monkeypatch):
    monkeypatch.setattr(local_node_module, "MAX_OUTBOX", 10)
    hub = hubs[0]
    a, b = gevent.socket.socketpair(socket.AF_UNIX)
    hub.node = LocalNode(hub)
    hub.node.open_link(a, "a test peer")
    for n in range(20):
        hub.broadcast("/chat", f"m{n}")
    assert hub.stats["cluster_dropped"] == 1
    wait_for(lambda: not hub.node.links, "the slow peer cut off")
    b.close()


def test_frames_read_back_whatever_the_cut():
    frames = [
        wire.hello("n1", None, [1, "bob"], [("general", 1)]),
        wire.broadcast("path", "/feed", OP_TEXT, b"hi", ("/feed", "e1", 4)),
        wire.broadcast("room", "general", OP_BINARY, b"\x00" * 70000, None),
        wire.holding("remove", [1]),
        wire.holding("leave", [("general", 1)]),
    ]
    data = b"".join(frames)
    for step in (1, 7, 4096, len(data)):
        reader = wire.FrameReader()
        got = []
        for start in range(0, len(data), step):
            got += reader.feed(data[start : start + step])
        assert [header["k"] for header, _ in got] == ["hello", "msg", "msg", "remove", "leave"]
        header = {"k": "msg", "t": "path", "n": "/feed", "op": OP_TEXT, "s": "/feed", "e": "e1", "o": 4}
        assert got[1] == (header, b"hi")
        assert got[2][1] == b"\x00" * 70000
        assert wire.room_users(got[4][0]["rooms"]) == [("general", 1)]


@pytest.mark.parametrize(
    "data",
    [
        wire.FRAME_LENGTHS.pack(wire.MAX_HEADER + 1, 0),
        wire.FRAME_LENGTHS.pack(2, 0) + b"[]",
        wire.FRAME_LENGTHS.pack(3, 0) + b"{x}",
        wire.FRAME_LENGTHS.pack(2, 0) + b"{}",
    ],
)
def test_a_bad_frame_is_refused(data):
    with pytest.raises(wire.BadFrame):
        wire.FrameReader().feed(data)


def test_a_stream_message_is_named_by_its_envelope_prefix():
    prefix = envelopes.stream_prefix('room:"odd"', "Ab_9")
    assert wire.stream_of(prefix, 12) == ('room:"odd"', "Ab_9", 12)
    assert wire.stream_of(b"", 3) is None
    assert wire.stream_of(prefix, 0) is None
