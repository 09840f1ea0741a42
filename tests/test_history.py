"""The pure parts of streams with history: envelopes, resume positions, the stores' contract, the tail."""

from __future__ import annotations

import base64
import json
import sqlite3
import zlib

import pytest

from asok_green.history import memory_store
from asok_green.history.memory_store import MemoryStore
from asok_green.history.sqlite_store import SqliteStore
from asok_green.history.stores import make_store
from asok_green.history.streams import Policy, Stream, TailBudget, check_policy
from asok_green.protocol.deflate import PerMessageDeflate
from asok_green.protocol.envelopes import (
    BadSince,
    Since,
    notice,
    parse_since_object,
    parse_since_text,
    plain_envelope,
    since_from_query,
    stream_envelope,
    stream_prefix,
)
from asok_green.protocol.frames import OP_BINARY, OP_TEXT
from asok_green.protocol.outgoing import Outgoing
from asok_green.server.hub import WebSocketServer
from tests.server_frames import parse_server_frames

pytestmark = pytest.mark.quick

# -- envelopes ---------------------------------------------------------------------


def test_a_stream_envelope_is_json_naming_stream_epoch_and_offset():
    prefix = stream_prefix("/chat/général", "Ep0ch")
    text = stream_envelope(prefix, 7, OP_TEXT, 'say "hi" é'.encode())
    assert json.loads(text) == {"s": "/chat/général", "e": "Ep0ch", "o": 7, "d": 'say "hi" é'}


def test_a_binary_message_travels_as_base64():
    text = stream_envelope(stream_prefix("room:x", "e"), 1, OP_BINARY, b"\x00\xff")
    assert json.loads(text)["b"] == base64.b64encode(b"\x00\xff").decode()
    assert json.loads(plain_envelope(OP_BINARY, b"\x01")) == {"b": "AQ=="}


def test_a_plain_envelope_holds_only_the_data():
    assert json.loads(plain_envelope(OP_TEXT, b'{"op": "x"}')) == {"d": '{"op": "x"}'}


def test_a_notice_names_its_kind_stream_and_position():
    assert json.loads(notice("resumed", "/a", "e", 3, replayed=2)) == {
        "asok": "resumed",
        "s": "/a",
        "e": "e",
        "o": 3,
        "replayed": 2,
    }


# -- resume positions ------------------------------------------------------------------


def test_since_text_is_epoch_colon_offset():
    assert parse_since_text("Ab_-9:42") == Since("Ab_-9", 42)
    assert parse_since_text("e:0") == Since("e", 0)


@pytest.mark.parametrize(
    "value", ["", "e", "e:", ":1", "e:-1", "e:1.5", "e:x", "é:1", "e f:1", "e:1:", "a" * 65 + ":1"]
)
def test_bad_since_text_is_refused(value):
    with pytest.raises(BadSince, match="asok_since must be <epoch>:<offset>"):
        parse_since_text(value)


def test_an_offset_too_large_is_refused():
    with pytest.raises(BadSince):
        parse_since_text("e:" + "9" * 19)


def test_since_object_needs_a_string_epoch_and_an_int_offset():
    assert parse_since_object({"e": "ep", "o": 3}) == Since("ep", 3)
    for bad in (
        None,
        [],
        {"e": "ep"},
        {"e": 1, "o": 1},
        {"e": "ep", "o": "1"},
        {"e": "ep", "o": True},
        {"e": "", "o": 1},
    ):
        with pytest.raises(BadSince):
            parse_since_object(bad)


def test_since_from_query_reads_only_asok_since():
    assert since_from_query("") is None
    assert since_from_query("token=abc") is None
    assert since_from_query("a=1&asok_since=ep%3A5") == Since("ep", 5)
    with pytest.raises(BadSince):
        since_from_query("asok_since=e:1&asok_since=e:2")
    with pytest.raises(BadSince):
        since_from_query("asok_since=")


# -- the v1 frame of a broadcast is built once ---------------------------------------


def test_the_v1_frame_is_built_once_and_shared():
    message = Outgoing(OP_TEXT, b"hello")
    first = message.v1_frame_for(None)
    assert message.v1_frame_for(None) is first
    (opcode, payload), _ = parse_server_frames(first)[0][0], None
    assert opcode == OP_TEXT and json.loads(payload) == {"d": "hello"}
    assert message.frame_for(None) == b"\x81\x05hello"  # plain clients: unchanged


def test_a_stream_message_carries_its_offset_in_the_v1_frame():
    message = Outgoing(OP_BINARY, b"\x01")
    message.in_stream(stream_prefix("/s", "ep"), 9)
    (opcode, payload) = parse_server_frames(message.v1_frame_for(None))[0][0]
    assert opcode == OP_TEXT
    assert json.loads(payload) == {"s": "/s", "e": "ep", "o": 9, "b": "AQ=="}
    assert message.frame == b"\x82\x01\x01"


def test_the_v1_frame_is_compressed_for_deflate_clients():
    message = Outgoing(OP_TEXT, b"hello " * 50)
    message.in_stream(stream_prefix("/s", "ep"), 1)
    frame = message.v1_frame_for(PerMessageDeflate())
    assert frame[0] & 0x40  # RSV1: compressed
    assert message.v1_frame_for(PerMessageDeflate()) is frame
    body = parse_server_frames(frame)[0][0][1]
    text = zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")
    assert json.loads(text)["d"] == "hello " * 50


# -- the stores' contract (memory and SQLite) -------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    made = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "h.sqlite3"))
    made.start(None)
    yield made
    made.stop()


def publish(store, stream: str, *payloads: bytes, opcode: int = OP_TEXT) -> list[tuple[str, int]]:
    delivered: list[tuple[str, int]] = []
    for data in payloads:
        store.publish(stream, opcode, data, lambda epoch, offset: delivered.append((epoch, offset)))
    return delivered


def test_offsets_start_at_one_and_grow_by_one_in_one_epoch(store):
    store.configure("/a", 10, None)
    epoch, last = store.position("/a")
    assert last == 0
    assert publish(store, "/a", b"x", b"y", b"z") == [(epoch, 1), (epoch, 2), (epoch, 3)]
    assert store.position("/a") == (epoch, 3)


def test_streams_count_their_offsets_apart(store):
    publish(store, "/a", b"1", b"2")
    assert [o for _, o in publish(store, "room:b", b"1")] == [1]


def test_read_since_returns_the_messages_after_the_offset(store):
    store.configure("/a", 10, None)
    delivered = publish(store, "/a", b"x", b"y", b"z")
    publish(store, "/a", b"\x00", opcode=OP_BINARY)
    epoch = delivered[0][0]
    assert store.read_since("/a", epoch, 1) == (
        epoch,
        4,
        [(2, OP_TEXT, b"y"), (3, OP_TEXT, b"z"), (4, OP_BINARY, b"\x00")],
    )
    assert store.read_since("/a", epoch, 4) == (epoch, 4, [])


def test_read_since_is_none_for_another_epoch_or_beyond_the_last(store):
    epoch = publish(store, "/a", b"x")[0][0]
    assert store.read_since("/a", "other", 0) is None
    assert store.read_since("/a", epoch, 5) is None


def test_read_since_is_none_when_the_history_no_longer_reaches_back(store):
    store.configure("/a", 3, None)
    epoch = publish(store, "/a", *[b"%d" % i for i in range(10)])[0][0]
    assert store.read_since("/a", epoch, 7) == (epoch, 10, [(8, 1, b"7"), (9, 1, b"8"), (10, 1, b"9")])
    assert store.read_since("/a", epoch, 6) is None


def test_messages_older_than_the_ttl_are_out_of_reach(store, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(memory_store, "time", lambda: clock[0])
    monkeypatch.setattr("asok_green.history.sqlite_store.time", lambda: clock[0])
    store.configure("/a", 100, 60.0)
    epoch = publish(store, "/a", b"old")[0][0]
    clock[0] += 120
    publish(store, "/a", b"new")
    assert store.read_since("/a", epoch, 0) is None
    assert store.read_since("/a", epoch, 1) == (epoch, 2, [(2, OP_TEXT, b"new")])


# -- SQLite: restarts and processes that share the file --------------------------------------


def test_a_sqlite_store_reopened_continues_the_same_epoch(tmp_path):
    path = str(tmp_path / "h.sqlite3")
    first = SqliteStore(path)
    epoch = publish(first, "/a", b"x", b"y")[0][0]
    first.stop()
    second = SqliteStore(path)
    assert second.position("/a") == (epoch, 2)
    assert publish(second, "/a", b"z") == [(epoch, 3)]
    assert second.read_since("/a", epoch, 0)[2] == [(1, 1, b"x"), (2, 1, b"y"), (3, 1, b"z")]


def test_two_sqlite_stores_on_one_file_never_reuse_an_offset(tmp_path):
    path = str(tmp_path / "h.sqlite3")
    one, two = SqliteStore(path), SqliteStore(path)
    offsets = []
    for i in range(20):
        offsets += [o for _, o in publish(one if i % 2 else two, "/a", b"%d" % i)]
    assert offsets == list(range(1, 21))
    assert len({e for e, _ in publish(one, "/a", b"x") + publish(two, "/a", b"y")}) == 1


def test_a_deleted_sqlite_file_starts_a_new_epoch(tmp_path, monkeypatch):
    path = tmp_path / "h.sqlite3"
    store = SqliteStore(str(path))
    epoch = publish(store, "/a", b"x")[0][0]
    for name in (path, tmp_path / "h.sqlite3-wal", tmp_path / "h.sqlite3-shm"):
        name.unlink(missing_ok=True)
    monkeypatch.setattr("asok_green.history.sqlite_store._FILE_CHECK_INTERVAL", 0.0)
    new_epoch, offset = publish(store, "/a", b"y")[0]
    assert new_epoch != epoch and offset == 1
    assert store.read_since("/a", epoch, 0) is None


def test_a_failed_write_starts_a_new_epoch(tmp_path):
    store = SqliteStore(str(tmp_path / "h.sqlite3"))
    epoch = publish(store, "/a", b"x", b"y")[0][0]
    with pytest.raises(sqlite3.Error):
        store.publish("/a", OP_TEXT, object(), lambda e, o: None)  # SQLite cannot store it
    new_epoch, offset = publish(store, "/a", b"z")[0]
    assert new_epoch != epoch and offset == 1


def test_stores_are_chosen_by_name():
    assert isinstance(make_store("memory", {}), MemoryStore)
    with pytest.raises(ValueError, match="WS_HISTORY_STORE='nosuch'"):
        make_store("nosuch", {})


# -- the in-memory tail of a stream --------------------------------------------------------


def tail_stream(size: int = 5, ttl: float | None = None) -> Stream:
    stream = Stream("/a", Policy(size, ttl))
    stream.enter_epoch("ep", 0)
    for offset in range(1, 9):
        message = Outgoing(OP_TEXT, b"%d" % offset)
        message.in_stream(stream.prefix, offset)
        stream.remember(offset, 100.0, message)
        stream.last = offset
    return stream


def test_the_tail_answers_a_replay_it_holds_whole():
    stream = tail_stream()  # holds 4..8
    assert [m.offset for m in stream.tail_since(Since("ep", 3), 100.0)] == [4, 5, 6, 7, 8]
    assert stream.tail_since(Since("ep", 8), 100.0) == []


def test_the_tail_leaves_to_the_store_what_it_does_not_hold():
    stream = tail_stream()
    assert stream.tail_since(Since("ep", 2), 100.0) is None  # 3 is gone
    assert stream.tail_since(Since("other", 5), 100.0) is None
    assert stream.tail_since(Since("ep", 9), 100.0) is None  # beyond what this process delivered
    assert tail_stream(ttl=10).tail_since(Since("ep", 5), 200.0) is None  # expired


def test_a_new_epoch_empties_the_tail():
    stream = tail_stream()
    stream.enter_epoch("next", 0)
    assert not stream.tail and stream.tail_since(Since("ep", 5), 100.0) is None


def test_a_full_tail_drops_its_oldest_and_counts_what_it_holds():
    stream = tail_stream()  # 8 messages of 1 byte through a tail of 5
    assert [offset for offset, _, _ in stream.tail] == [4, 5, 6, 7, 8]
    assert stream.budget.used == 5
    stream.forget_tail()
    assert stream.budget.used == 0 and not stream.tail


def test_tails_over_the_budget_empty_the_least_recently_published_first():
    budget = TailBudget(limit=250)
    quiet, busy = Stream("/quiet", Policy(10, None), budget), Stream("/busy", Policy(10, None), budget)
    for stream in (quiet, busy):
        stream.enter_epoch("ep", 0)
    quiet.remember(1, 0.0, Outgoing(OP_TEXT, b"q" * 100))
    busy.remember(1, 0.0, Outgoing(OP_TEXT, b"b" * 100))
    assert len(quiet.tail) == 1 and budget.used == 200
    busy.remember(2, 0.0, Outgoing(OP_TEXT, b"b" * 100))
    assert not quiet.tail and len(busy.tail) == 2 and budget.used == 200


# -- the app's API ---------------------------------------------------------------------------


def test_history_policies_must_be_positive():
    assert check_policy(10, None) == Policy(10, None)
    assert check_policy(10, 5) == Policy(10, 5.0)
    for size, ttl in ((0, None), (-1, None), (1.5, None), ("10", None), (10, 0), (10, "1")):
        with pytest.raises(ValueError):
            check_policy(size, ttl)


def test_routes_and_room_globs_choose_the_streams_with_history(tmp_path):
    from asok_green.server import hub as hub_module

    ws = WebSocketServer()
    try:
        ws.on("/chat/[room]", history=20)(lambda conn, message: None)
        ws.on("/plain")(lambda conn, message: None)
        ws.keep_history("room:news-*", size=7, ttl=30)
        ws.history.store = MemoryStore()
        assert ws.history.path_stream("/chat/general").policy == Policy(20, None)
        assert ws.history.path_stream("/plain") is None
        assert ws.history.room_stream("news-1").name == "room:news-1"
        assert ws.history.room_stream("news-1").policy == Policy(7, 30.0)
        assert ws.history.room_stream("sports") is None
    finally:
        hub_module._INSTANCES.remove(ws)


# -- messages from other processes (hub.deliver_stream) ---------------------------------------


def frames_from(sock, count: int) -> list[dict]:
    """``count`` text frames the server wrote to the other end of ``sock``, decoded."""
    data, frames = b"", []
    sock.settimeout(5)
    while len(frames) < count:
        data += sock.recv(65536)
        frames, _ = parse_server_frames(data)
    return [json.loads(payload) for _, payload in frames]


def test_a_message_from_elsewhere_past_a_gap_comes_after_the_missing_ones_and_once():
    import gevent.socket

    from asok_green.server import hub as hub_module
    from asok_green.server.connection import V1Connection

    ws = WebSocketServer()
    a, b = gevent.socket.socketpair()
    try:
        ws.on("/feed", history=50)(lambda conn, message: None)
        ws.history.store = store = MemoryStore()
        ws.register(V1Connection(ws, a, ("127.0.0.1", 1), "/feed", {}))
        for text in (b"one", b"two", b"three"):  # published by another process
            store.publish("/feed", OP_TEXT, text, lambda epoch, offset: None)
        epoch, _ = store.position("/feed")
        assert ws.deliver_stream("/feed", epoch, 3, OP_TEXT, b"three") == 1
        assert ws.deliver_stream("/feed", epoch, 2, OP_TEXT, b"two") == 0  # had it already
        ws.broadcast("/feed", "four")
        frames = frames_from(b, 5)
        assert frames[0] == {"asok": "position", "s": "/feed", "e": epoch, "o": 0}
        assert [(f["o"], f["d"]) for f in frames[1:]] == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]
    finally:
        a.close()
        b.close()
        hub_module._INSTANCES.remove(ws)
