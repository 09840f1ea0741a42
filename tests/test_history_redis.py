"""Stream history in Redis Streams (asok_green.history.redis_store), against a real redis-server.

``StreamLog`` is the Redis side (one script per append batch, read, position),
driven here with a plain redis-py client; ``WriteQueue`` is the pure bookkeeping
of what a node still has to write and to deliver. The store as a whole, in
server processes joined by Redis, is tested in test_history_cluster.py.
"""

from __future__ import annotations

import time

import pytest
import redis

from asok_green.history.redis_log import StreamLog
from asok_green.history.redis_store import parse_published
from asok_green.history.write_queue import PendingMessage, WriteQueue

pytestmark = pytest.mark.quick

CHANNEL = "asok:ws:history"


@pytest.fixture
def client(redis_server):
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()
    yield conn
    conn.close()


def make_log(client, node: str = "node-a") -> StreamLog:
    return StreamLog(client, "asok:ws", node, CHANNEL)


def messages(stream: str, *payloads: bytes, first_seq: int = 1, opcode: int = 1) -> list[PendingMessage]:
    return [PendingMessage(first_seq + i, stream, opcode, data, lambda e, o: None) for i, data in enumerate(payloads)]


def sized(size: int, ttl: float | None = None):
    return lambda stream: (size, ttl)


def test_appends_get_consecutive_offsets_in_one_epoch_and_read_back_in_order(client):
    log = make_log(client)
    results = log.append(1, messages("/chat/a", b"one", b"two", b"three"), sized(100))
    epoch = results[0][0]
    assert results == [(epoch, 1), (epoch, 2), (epoch, 3)]
    assert log.position("/chat/a") == (epoch, 3)
    assert log.read_since("/chat/a", epoch, 0) == (epoch, 3, [(1, 1, b"one"), (2, 1, b"two"), (3, 1, b"three")])
    assert log.read_since("/chat/a", epoch, 2) == (epoch, 3, [(3, 1, b"three")])
    assert log.read_since("/chat/a", epoch, 3) == (epoch, 3, [])


def test_each_stream_counts_on_its_own(client):
    log = make_log(client)
    batch = (
        messages("/chat/a", b"a1") + messages("room:x", b"x1", first_seq=2) + messages("/chat/a", b"a2", first_seq=3)
    )
    results = log.append(1, batch, sized(100))
    assert [offset for _, offset in results] == [1, 1, 2]


def test_a_new_stream_gets_its_epoch_from_position_and_offsets_start_after_it(client):
    log = make_log(client)
    epoch, last = log.position("room:new")
    assert last == 0 and epoch
    assert log.append(1, messages("room:new", b"hi"), sized(10)) == [(epoch, 1)]
    assert log.read_since("room:new", epoch, 0) == (epoch, 1, [(1, 1, b"hi")])


def test_binary_payloads_with_newlines_survive_the_round_trip(client):
    log = make_log(client)
    data = bytes(range(256)) + b"\n\r\n\x00"
    ((epoch, offset),) = log.append(1, messages("/bin", data, opcode=2), sized(10))
    assert log.read_since("/bin", epoch, 0) == (epoch, 1, [(1, 2, data)])


def test_every_append_is_published_with_its_stream_epoch_offset_node_and_seq_in_order(client):
    pubsub = client.pubsub()
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    log = make_log(client, node="node-z")
    results = log.append(7, messages("/chat/\u00e9t\u00e9", b"x\ny", b"\xff\x00", first_seq=7), sized(10))
    got = []
    while len(got) < 2:
        item = pubsub.get_message(timeout=5)
        assert item is not None, "nothing published"
        if item["type"] == "message":
            got.append(parse_published(item["data"]))
    pubsub.close()
    epoch = results[0][0]
    assert [(p.stream, p.epoch, p.offset, p.opcode, p.node, p.seq, p.data) for p in got] == [
        ("/chat/\u00e9t\u00e9", epoch, 1, 1, "node-z", 7, b"x\ny"),
        ("/chat/\u00e9t\u00e9", epoch, 2, 1, "node-z", 8, b"\xff\x00"),
    ]


def test_a_batch_sent_again_after_a_lost_reply_is_not_written_twice(client):
    log = make_log(client)
    batch = messages("/chat/a", b"one", b"two")
    first = log.append(1, batch, sized(100))
    assert log.append(1, batch, sized(100)) == first
    epoch = first[0][0]
    assert log.position("/chat/a") == (epoch, 2)
    assert log.append(3, messages("/chat/a", b"three", first_seq=3), sized(100)) == [(epoch, 3)]


def test_offsets_are_global_when_two_nodes_write_the_same_stream(client):
    a, b = make_log(client, "node-a"), make_log(client, "node-b")
    offsets = []
    for i in range(1, 6):
        offsets += [o for _, o in a.append(i, messages("/chat/a", b"a%d" % i, first_seq=i), sized(100))]
        offsets += [o for _, o in b.append(i, messages("/chat/a", b"b%d" % i, first_seq=i), sized(100))]
    assert offsets == list(range(1, 11))
    epoch, last, entries = a.read_since("/chat/a", a.position("/chat/a")[0], 0)
    assert [d for _, _, d in entries] == [b"a1", b"b1", b"a2", b"b2", b"a3", b"b3", b"a4", b"b4", b"a5", b"b5"]


def test_size_trims_the_oldest_and_a_resume_from_before_them_cannot_be_whole(client):
    log = make_log(client)
    results = log.append(1, messages("/chat/a", b"1", b"2", b"3", b"4", b"5"), sized(3))
    epoch = results[0][0]
    assert client.xlen("asok:ws:history:/chat/a") == 3
    assert log.read_since("/chat/a", epoch, 1) is None
    assert log.read_since("/chat/a", epoch, 2) == (epoch, 5, [(3, 1, b"3"), (4, 1, b"4"), (5, 1, b"5")])


def test_ttl_hides_old_messages_from_a_resume_and_trims_them_at_the_next_append(client):
    log = make_log(client)
    (epoch, _), _ = log.append(1, messages("/chat/a", b"old1", b"old2"), sized(100, ttl=0.2))
    time.sleep(0.5)
    assert log.read_since("/chat/a", epoch, 0) is None
    assert log.append(3, messages("/chat/a", b"new", first_seq=3), sized(100, ttl=0.2)) == [(epoch, 3)]
    assert client.xlen("asok:ws:history:/chat/a") == 1
    assert log.read_since("/chat/a", epoch, 2) == (epoch, 3, [(3, 1, b"new")])


def test_another_epoch_or_an_offset_beyond_the_last_cannot_resume(client):
    log = make_log(client)
    ((epoch, _),) = log.append(1, messages("/chat/a", b"1"), sized(10))
    assert log.read_since("/chat/a", "someother", 0) is None
    assert log.read_since("/chat/a", epoch, 5) is None
    assert log.read_since("/chat/unknown", epoch, 0) is None


def test_a_redis_that_lost_its_data_gives_a_new_epoch(client):
    log = make_log(client)
    ((old, _),) = log.append(1, messages("/chat/a", b"1"), sized(10))
    client.flushall()
    assert log.read_since("/chat/a", old, 1) is None
    new, last = log.position("/chat/a")
    assert new != old and last == 0
    assert log.append(2, messages("/chat/a", b"2", first_seq=2), sized(10)) == [(new, 1)]


def test_a_renewed_stream_starts_a_new_epoch_without_its_old_entries(client):
    log = make_log(client)
    (old, _), _ = log.append(1, messages("/chat/a", b"1", b"2"), sized(10))
    renewed = messages("/chat/a", b"3", first_seq=3)
    renewed[0].renew = True
    ((new, offset),) = log.append(3, renewed, sized(10))
    assert new != old and offset == 1
    assert log.read_since("/chat/a", old, 2) is None
    assert log.read_since("/chat/a", new, 0) == (new, 1, [(1, 1, b"3")])


def test_keys_of_another_type_in_the_way_start_the_stream_over_instead_of_failing_the_batch(client):
    log = make_log(client)
    client.set("asok:ws:history-meta:/meta", "not a hash")
    client.set("asok:ws:history:/entries", "not a stream")
    batch = messages("/meta", b"m") + messages("/entries", b"e", first_seq=2) + messages("/fine", b"f", first_seq=3)
    results = log.append(1, batch, sized(10))
    assert [offset for _, offset in results] == [1, 1, 1]
    for stream, (epoch, _), data in zip(("/meta", "/entries", "/fine"), results, (b"m", b"e", b"f")):
        assert log.read_since(stream, epoch, 0) == (epoch, 1, [(1, 1, data)])


def test_a_stream_whose_ids_run_ahead_of_its_offsets_starts_a_new_epoch(client):
    log = make_log(client)
    ((old, _),) = log.append(1, messages("/chat/a", b"1"), sized(10))
    client.hset("asok:ws:history-meta:/chat/a", "last", 0)  # offset 1 again: its id is taken
    ((new, offset),) = log.append(2, messages("/chat/a", b"2", first_seq=2), sized(10))
    assert new != old and offset == 1
    assert log.read_since("/chat/a", new, 0) == (new, 1, [(1, 1, b"2")])


def test_ttl_trimming_goes_64_expired_entries_per_append_and_keeps_the_young(client):
    log = make_log(client)
    ttl = sized(1000, ttl=2.0)
    (epoch, _), *_ = log.append(1, messages("/t", *[b"old"] * 100), ttl)
    time.sleep(1.2)
    log.append(101, messages("/t", b"mid", first_seq=101), ttl)  # the stream stays while it is written
    time.sleep(1.2)
    log.append(102, messages("/t", b"young", first_seq=102), ttl)
    assert client.xlen("asok:ws:history:/t") == 100 - 64 + 2
    log.append(103, messages("/t", b"last", first_seq=103), ttl)
    assert client.xlen("asok:ws:history:/t") == 3
    assert log.read_since("/t", epoch, 100)[2] == [(101, 1, b"mid"), (102, 1, b"young"), (103, 1, b"last")]
    assert log.read_since("/t", epoch, 99) is None


def test_an_idle_stream_with_a_ttl_vanishes_but_keeps_its_epoch_and_offsets(client):
    log = make_log(client)
    (epoch, _), _ = log.append(1, messages("/idle", b"1", b"2"), sized(10, ttl=0.2))
    time.sleep(0.5)
    assert client.exists("asok:ws:history:/idle") == 0
    assert log.read_since("/idle", epoch, 0) is None
    assert log.position("/idle") == (epoch, 2)


# -- WriteQueue: pure bookkeeping ------------------------------------------------------------


def noop(epoch, offset):
    pass


def test_queue_batches_in_order_and_keeps_the_batch_on_the_wire_until_written():
    queue = WriteQueue(limit=10)
    for i in range(5):
        queue.add("/s", 1, b"%d" % i, noop)
    batch = queue.next_batch(most=3)
    assert [m.data for m in batch] == [b"0", b"1", b"2"]
    queue.add("/s", 1, b"5", noop)
    assert queue.next_batch(most=3) is batch  # a failed send goes again, as it was
    assert queue.written([("e", 1), ("e", 2), ("e", 3)]) == []  # they wait for their echo
    assert [m.data for m in queue.next_batch(most=10)] == [b"3", b"4", b"5"]


def test_queue_full_drops_the_oldest_and_its_stream_renews_at_the_next_write():
    queue = WriteQueue(limit=2)
    assert queue.add("/a", 1, b"a1", noop) is None
    assert queue.add("/b", 1, b"b1", noop) is None
    dropped = queue.add("/a", 1, b"a2", noop)
    assert dropped.data == b"a1" and queue.dropped == 1
    batch = queue.next_batch()
    assert [(m.data, m.renew) for m in batch] == [(b"b1", False), (b"a2", True)]
    assert queue.renew == set()


def test_echoes_deliver_each_message_once():
    queue = WriteQueue()
    queue.add("/s", 1, b"x", noop)
    queue.add("/s", 1, b"y", noop)
    first, second = queue.next_batch()
    assert queue.echoed(first.seq, "e", 1) is first
    assert (first.epoch, first.offset) == ("e", 1)
    assert queue.written([("e", 1), ("e", 2)]) == []
    assert queue.echoed(second.seq, "e", 2) is second
    assert queue.echoed(second.seq, "e", 2) is None


def test_after_a_resubscription_written_messages_are_due_at_once_and_unwritten_ones_at_their_reply():
    queue = WriteQueue()
    queue.add("/s", 1, b"x", noop)
    (written,) = queue.next_batch()
    queue.written([("e", 1)])  # its echo was on the subscription that broke
    queue.add("/s", 1, b"y", noop)
    (on_the_wire,) = queue.next_batch()
    assert queue.resubscribed() == [written]
    assert queue.written([("e", 2)]) == [on_the_wire]
    assert queue.echoed(on_the_wire.seq, "e", 2) is None


def test_a_refused_batch_is_dropped_and_renews_its_streams():
    queue = WriteQueue()
    queue.add("/s", 1, b"x", noop)
    queue.next_batch()
    assert [m.data for m in queue.refused()] == [b"x"]
    assert queue.renew == {"/s"} and queue.dropped == 1 and len(queue) == 0


def test_parse_published_refuses_garbage():
    assert parse_published(b"no newline") is None
    assert parse_published(b"not json\nx") is None
    assert parse_published(b'["s", "e", "1", 1, "n", 1]\nx') is None
