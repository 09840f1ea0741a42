"""Stream history shared through Redis Streams by two server nodes, with real clients.

Nodes A and B (`asok serve --gevent`, `WS_ADAPTER=redis`) serve a project whose
``/feed/[name]`` paths keep history. Clients that speak ``asok-green.v1`` read
each message with its stream, epoch and offset and follow the client rule of the
protocol (deliver offset last + 1, drop a duplicate, reconnect with
``asok_since`` on a gap). Offsets come from Redis, so a client resumes on the
other node (paths and rooms); both nodes publishing at once give one sequence; a
killed node's clients move to the other one; cut subscriptions lose nothing; a
Redis outage keeps plain delivery going and writes the history when Redis is
back, or changes the epoch when the queue had to drop something.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
import websocket

from tests.asok_project import login, make_project, project_env
from tests.cluster_support import Clients, RedisServer, node_env, recv_texts, start_node
from tests.conftest import BIN, INTROSPECTION, asok_serve, free_port, until_marker, ws_connect

pytestmark = pytest.mark.timeout(90)

V1 = "asok-green.v1"

FEED_ROUTES = """

ws.keep_history("/feed/[name]", size=1000)


@ws.on("/feed/[name]")
def feed(conn, message):
    ws.broadcast(conn.path, message)


ws.keep_history("room:hist-*", size=1000)


@ws.on("/to-room/[room]")
def to_room(conn, message):
    ws.broadcast_to(conn.params["room"], message)
"""


@pytest.fixture(scope="module")
def feed_project(tmp_path_factory):
    """The test project plus ``/feed/[name]``: each message is broadcast to its path, which keeps history."""
    return make_project(tmp_path_factory.mktemp("history-project"), extra_wsgi=INTROSPECTION + FEED_ROUTES)


@pytest.fixture(scope="module")
def nodes(feed_project, start_nodes):
    """Nodes A and B on the module's Redis."""
    return start_nodes(feed_project, 2)


class Gap(Exception):
    """A stream message arrived with an offset beyond last + 1: the client must resume."""


class Closed(Exception):
    """The server closed the connection (or its process died)."""


class ResumeClient:
    """A v1 client of one path stream that follows the protocol's client rule.

    ``delivered`` holds the payloads it delivered, in order; ``duplicates`` counts
    the messages it dropped as already seen.
    """

    def __init__(self, node, path: str, opened: Clients, since: tuple[str, int] | None = None):
        """Connect to ``node`` on ``path``: fresh (read the ``position``), or resuming from ``since``."""
        self.path = path
        self.stream = getattr(self, "stream", path)
        self.opened = opened
        self.epoch, self.last = since or (None, 0)
        self.delivered: list[str] = []
        self.duplicates = 0
        self.notices: list[dict] = []
        self.first_notice = self.connect(node, since=since is not None)

    def connect(self, node, since: bool = False) -> dict:
        """(Re)connect to ``node``, with ``asok_since`` when ``since``; returns the first notice."""
        query = f"?asok_since={self.epoch}:{self.last}" if since else ""
        self.ws = self.opened.connect(node, self.path + query, subprotocols=[V1])
        assert self.ws.getsubprotocol() == V1
        return self.next_notice()

    def next_notice(self, timeout: float = 10.0) -> dict:
        """Read (delivering stream messages) until the next server notice, and apply it."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.read(deadline - time.monotonic())
            if "asok" in message:
                self.notices.append(message)
                if message["asok"] in ("position", "continuity_lost"):
                    self.epoch, self.last = message["e"], message["o"]
                return message
            self.take(message)

    def read(self, timeout: float) -> dict:
        """The next frame as JSON; :class:`Closed` when the connection ends."""
        if timeout <= 0:
            raise AssertionError(f"nothing from the server in time (last {self.epoch}:{self.last})")
        self.ws.settimeout(timeout)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise AssertionError(f"nothing from the server in time (last {self.epoch}:{self.last})") from None
        except (websocket.WebSocketConnectionClosedException, OSError) as exc:
            raise Closed(str(exc)) from None
        if not text:
            raise Closed("closed")
        return json.loads(text)

    def take(self, message: dict) -> None:
        """Apply the client rule to one stream message (other frames are skipped)."""
        if "s" not in message:
            return  # presence and such, in their plain envelope
        assert message["s"] == self.stream, message
        epoch, offset = message["e"], message["o"]
        if epoch != self.epoch:
            self.notices.append({"asok": "new_epoch", "e": epoch, "o": offset})
            self.epoch, self.last = epoch, offset - 1
        if offset <= self.last:
            self.duplicates += 1
            return
        if offset > self.last + 1:
            raise Gap(f"got {offset} after {self.last}")
        self.last = offset
        self.delivered.append(message["d"])

    def collect(self, count: int, timeout: float = 10.0) -> list[str]:
        """Read until ``count`` messages are delivered in all; the new ones."""
        start = len(self.delivered)
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            message = self.read(deadline - time.monotonic())
            if "asok" in message:
                self.notices.append(message)
            else:
                self.take(message)
        return self.delivered[start:]


class RoomResumeClient(ResumeClient):
    """A v1 client of a room's stream: on /asok/live, joining the room (with ``since`` to resume)."""

    def __init__(self, node, room: str, opened: Clients, since: tuple[str, int] | None = None):
        """Connect to ``node`` and join ``room``."""
        self.room = room
        self.stream = f"room:{room}"
        super().__init__(node, "/asok/live", opened, since)

    def connect(self, node, since: bool = False) -> dict:
        """(Re)connect to ``node`` and join the room, from the last position when ``since``."""
        self.ws = self.opened.connect(node, "/asok/live", subprotocols=[V1])
        join: dict = {"op": "join_room", "room": self.room}
        if since:
            join["since"] = {"e": self.epoch, "o": self.last}
        self.ws.send(json.dumps(join))
        return self.next_notice()


def catch_up(reader: ResumeClient, node, count: int, timeout: float = 15.0) -> None:
    """Collect until ``reader`` has delivered ``count`` messages, resuming on ``node`` after a gap or a close."""
    while len(reader.delivered) < count:
        try:
            reader.collect(count, timeout=timeout)
        except (Closed, Gap):
            notice = reader.connect(node, since=True)
            assert notice["asok"] == "resumed", notice


def position_on(node, path: str, clients: Clients) -> tuple[str, int]:
    """The (epoch, offset) a new v1 client of ``path`` is told on ``node``."""
    client = ResumeClient(node, path, clients)
    client.ws.close()
    return client.epoch, client.last


def position_on_room(node, room: str, clients: Clients) -> tuple[str, int]:
    """The (epoch, offset) a v1 client joining ``room`` is told on ``node``."""
    client = RoomResumeClient(node, room, clients)
    client.ws.close()
    return client.epoch, client.last


def publish(node, path: str, payloads, clients: Clients, pause: float = 0.0) -> None:
    """Send each payload from a plain client on ``node`` (the route broadcasts it)."""
    sender = clients.connect(node, path)
    for payload in payloads:
        sender.send(payload)
        if pause:
            time.sleep(pause)


def test_a_v1_client_resumes_on_the_other_node_with_no_gap_or_duplicate(nodes, clients):
    a, b = nodes
    path = "/feed/move"
    reader = ResumeClient(a, path, clients)
    first_position = reader.last
    publish(a, path, [f"m{i}" for i in range(5)], clients)
    assert reader.collect(5) == [f"m{i}" for i in range(5)]
    reader.ws.close()

    # Published on both nodes while the reader is away; a watcher on B sees them land.
    watcher = ResumeClient(b, path, clients)
    publish(a, path, ["m5", "m6"], clients)
    assert watcher.collect(2) == ["m5", "m6"]
    publish(b, path, ["m7", "m8", "m9"], clients)
    assert watcher.collect(5) == ["m7", "m8", "m9"]

    notice = reader.connect(b, since=True)
    assert notice["asok"] == "resumed", notice
    assert notice["replayed"] == 5 and notice["o"] == first_position + 10
    assert reader.delivered == [f"m{i}" for i in range(10)]
    publish(a, path, ["m10"], clients)
    assert reader.collect(11) == ["m10"]
    assert reader.duplicates == 0
    assert reader.last == first_position + 11


def test_a_room_member_resumes_on_the_other_node_by_joining_again_with_since(nodes, clients):
    a, b = nodes
    member = RoomResumeClient(a, "hist-1", clients)
    assert member.first_notice["asok"] == "position" and member.first_notice["s"] == "room:hist-1"
    start = member.last
    publish(b, "/to-room/hist-1", ["r0", "r1"], clients)
    assert member.collect(2) == ["r0", "r1"]
    publish(a, "/to-room/hist-1", ["r2"], clients)
    assert member.collect(3) == ["r2"]
    member.ws.close()

    def landed(count: int) -> None:
        deadline = time.monotonic() + 10
        while position_on_room(b, "hist-1", clients)[1] != start + count:
            assert time.monotonic() < deadline, "the message never landed"
            time.sleep(0.05)

    publish(a, "/to-room/hist-1", ["r3"], clients)
    landed(4)
    publish(b, "/to-room/hist-1", ["r4"], clients)
    landed(5)

    notice = member.connect(b, since=True)
    assert notice["asok"] == "resumed" and notice["replayed"] == 2, notice
    assert member.delivered == ["r0", "r1", "r2", "r3", "r4"] and member.duplicates == 0
    publish(a, "/to-room/hist-1", ["r5"], clients)
    assert member.collect(6) == ["r5"] and member.last == start + 6


def test_offsets_are_one_sequence_when_both_nodes_publish_at_once(nodes, clients):
    a, b = nodes
    path = "/feed/both"
    readers = [ResumeClient(node, path, clients) for node in (a, b)]
    plain = [clients.connect(node, path) for node in (a, b)]
    per_node = 100
    senders = [
        threading.Thread(target=publish, args=(node, path, [f"{name}{i}" for i in range(per_node)], clients))
        for name, node in (("a", a), ("b", b))
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
    expected = {f"{name}{i}" for name in "ab" for i in range(per_node)}
    for reader in readers:
        got = reader.collect(2 * per_node, timeout=20)
        assert set(got) == expected and reader.duplicates == 0
        for name in "ab":  # each node's messages in the order it sent them
            assert [m for m in got if m[0] == name] == [f"{name}{i}" for i in range(per_node)]
    # One order, the offsets', on both nodes.
    assert readers[0].delivered == readers[1].delivered
    assert readers[0].last == readers[1].last
    for client in plain:  # plain clients get each message once, as before
        got = recv_texts(client, 2 * per_node, timeout=20)
        assert sorted(got) == sorted(expected)


def test_clients_of_a_killed_node_resume_whole_on_the_other(feed_project, redis_server, tmp_path, clients):
    path = "/feed/kill"
    doomed = start_node(feed_project, tmp_path, redis_server)
    survivor = start_node(feed_project, tmp_path, redis_server)
    try:
        readers = [ResumeClient(doomed, path, clients) for _ in range(5)]
        payloads = [f"k{i}" for i in range(150)]
        sender = threading.Thread(target=publish, args=(survivor, path, payloads, clients, 0.01))
        sender.start()
        readers[0].collect(20, timeout=10)
        doomed.proc.send_signal(signal.SIGKILL)
        for reader in readers:
            catch_up(reader, survivor, len(payloads))
        sender.join(30)
        for reader in readers:
            assert reader.delivered == payloads
            assert reader.duplicates == 0
            assert not [n for n in reader.notices if n["asok"] in ("continuity_lost", "new_epoch")]
    finally:
        clients.close_all()
        survivor.stop()
        doomed.stop()


def test_subscriptions_cut_mid_stream_v1_clients_still_get_every_message_once_in_order(
    feed_project, tmp_path, own_redis, clients
):
    a, b = (start_node(feed_project, tmp_path, own_redis) for _ in range(2))
    path = "/feed/cut"
    try:
        local, remote = ResumeClient(a, path, clients), ResumeClient(b, path, clients)
        plain = clients.connect(a, path)
        payloads = [f"c{i}" for i in range(300)]
        sender = threading.Thread(target=publish, args=(a, path, payloads, clients, 0.005))
        sender.start()
        for _ in range(3):  # every node's subscriber connection dropped while messages are written
            local.collect(len(local.delivered) + 30, timeout=15)
            own_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        sender.join(30)
        catch_up(local, a, len(payloads))
        catch_up(remote, b, len(payloads))
        for reader in (local, remote):
            assert reader.delivered == payloads
            assert not [n for n in reader.notices if n["asok"] in ("continuity_lost", "new_epoch")]
        assert local.duplicates == 0
        assert recv_texts(plain, len(payloads), timeout=15) == payloads  # this node's own, once each
        # A marker from the other node, published after them all: a second copy would come before it.
        publish(b, path, ["marker"], clients)
        assert until_marker(plain, "marker".__eq__) == []
    finally:
        clients.close_all()
        a.stop()
        b.stop()


def outage_nodes(project, tmp_path, redis: RedisServer, **extra: str):
    """Nodes A and B of ``redis``'s cluster, A with ``extra`` settings."""
    first = asok_serve(project, tmp_path, env=node_env(redis, **extra))
    first.wait_for_log("joined the cluster")
    return first, start_node(project, tmp_path, redis)


def wait_for_count(node, text: str, count: int, timeout: float = 15) -> None:
    """Wait until ``text`` appears ``count`` times in ``node``'s log."""
    deadline = time.monotonic() + timeout
    while node.log().count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not {count} times in the log:\n{node.log()}")
        time.sleep(0.05)


def test_redis_paused_plain_delivery_goes_on_and_history_lands_after_in_the_same_epoch(
    feed_project, tmp_path, own_redis, clients
):
    a, b = outage_nodes(feed_project, tmp_path, own_redis)
    path = "/feed/pause"
    try:
        reader = ResumeClient(a, path, clients)
        remote = ResumeClient(b, path, clients)
        plain = clients.connect(a, path)
        publish(a, path, ["before"], clients)
        assert reader.collect(1) == ["before"] and remote.collect(1) == ["before"]
        epoch = reader.epoch

        own_redis.proc.send_signal(signal.SIGSTOP)  # unreachable, data kept
        try:
            a.wait_for_log("unreachable", timeout=15)
            publish(a, path, ["during1", "during2"], clients)
            assert recv_texts(plain, 3) == ["before", "during1", "during2"]
            # The marker: alice comes online on node A; it is told to every connection there, after
            # anything the broadcast above sent it.
            clients.connect(a, "/chat/marker", cookies=login(a.url, "alice"))
            before = until_marker(reader.ws, lambda m: '"type": "presence"' in json.loads(m).get("d", ""))
            assert before == [], "a v1 client got a stream message with no offset from Redis"
            # Meanwhile a v1 client is told the position this node delivered last...
            newcomer = ResumeClient(a, path, clients)
            assert (newcomer.epoch, newcomer.last) == (epoch, reader.last)
            # ...and one on a stream this node knows nothing of is asked to come back later.
            unknown = clients.connect(a, "/feed/unseen", subprotocols=[V1])
            opcode, frame = unknown.recv_data_frame(True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert int.from_bytes(frame.data[:2], "big") == 1013
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        a.wait_for_log("is back", timeout=15)

        assert reader.collect(3) == ["during1", "during2"]
        assert reader.epoch == epoch and reader.duplicates == 0
        assert newcomer.collect(2) == ["during1", "during2"] and newcomer.duplicates == 0
        # Node B, cut off too, may have missed them live: its client sees the gap at the next
        # message and fills it by resuming.
        publish(a, path, ["after"], clients)
        catch_up(remote, b, 4)
        assert remote.delivered == ["before", "during1", "during2", "after"] and remote.epoch == epoch
        assert reader.collect(4) == ["after"]
    finally:
        clients.close_all()
        a.stop()
        b.stop()


def test_redis_paused_past_the_queue_the_epoch_changes(feed_project, tmp_path, own_redis, clients):
    a, b = outage_nodes(feed_project, tmp_path, own_redis, WS_HISTORY_QUEUE="3")
    path = "/feed/overflow"
    try:
        reader = ResumeClient(a, path, clients)
        publish(a, path, ["before"], clients)
        assert reader.collect(1) == ["before"]
        old_epoch, old_last = reader.epoch, reader.last

        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            a.wait_for_log("unreachable", timeout=15)
            publish(a, path, [f"d{i}" for i in range(5)], clients)
            a.wait_for_log("history queue full")
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        a.wait_for_log("is back", timeout=15)

        # The two oldest were dropped: the three others land in a new epoch, from offset 1.
        assert reader.collect(4) == ["d2", "d3", "d4"]
        assert reader.epoch != old_epoch and reader.last == 3
        assert {"asok": "new_epoch", "e": reader.epoch, "o": 1} in reader.notices
        # Once node B has seen the new epoch too, a client that was away resumes there from the
        # old one: told so, nothing replayed.
        publish(a, path, ["after"], clients)
        assert reader.collect(5) == ["after"]
        deadline = time.monotonic() + 10
        while position_on(b, path, clients) != (reader.epoch, 4):
            assert time.monotonic() < deadline, "node B never saw the new epoch"
            time.sleep(0.1)
        notice = ResumeClient(b, path, clients, since=(old_epoch, old_last)).first_notice
        assert notice["asok"] == "continuity_lost" and notice["reason"] == "epoch_changed"
        assert (notice["e"], notice["o"]) == (reader.epoch, 4)
    finally:
        clients.close_all()
        a.stop()
        b.stop()


def test_redis_restarted_empty_history_written_after_lands_in_a_new_epoch(feed_project, tmp_path, own_redis, clients):
    a, b = outage_nodes(feed_project, tmp_path, own_redis)
    path = "/feed/restart"
    try:
        reader = ResumeClient(a, path, clients)
        plain = clients.connect(a, path)
        publish(a, path, ["before"], clients)
        assert reader.collect(1) == ["before"]
        old_epoch = reader.epoch

        own_redis.stop()
        a.wait_for_log("unreachable", timeout=15)
        publish(a, path, ["during"], clients)
        assert recv_texts(plain, 2) == ["before", "during"]
        own_redis.start()
        a.wait_for_log("is back", timeout=15)

        assert reader.collect(2) == ["during"]
        assert reader.epoch != old_epoch and reader.last == 1
        publish(b, path, ["after"], clients)
        assert reader.collect(3) == ["after"] and reader.last == 2
    finally:
        clients.close_all()
        a.stop()
        b.stop()


def test_a_broadcast_from_asoks_own_redis_adapter_is_delivered_once_everywhere_and_kept_by_no_one(
    nodes, redis_server, clients
):
    a, b = nodes
    path = "/feed/asok"
    reader = ResumeClient(a, path, clients)
    plain = clients.connect(b, path)
    envelope = {"target": "path", "name": path, "msg": "from asok", "node_id": "an-asok-server"}
    redis_server.command("PUBLISH", f"asok:ws:path:{path}", json.dumps(envelope))
    assert reader.read(5) == {"d": "from asok"}  # live, with no offset: no node kept it
    assert recv_texts(plain, 1) == ["from asok"]
    publish(b, path, ["kept"], clients)
    assert reader.collect(1) == ["kept"] and reader.last == 1
    assert redis_server.command("XLEN", f"asok:ws:history:{path}") == ":1"


def test_plain_client_on_history_path_sees_todays_frames(nodes, clients):
    a, b = nodes
    path = "/feed/plain"
    listener = ws_connect(b, path)
    clients.opened.append(listener)
    publish(a, path, ["hello"], clients)
    assert recv_texts(listener, 1) == ["hello"]
    # A marker from each node: anything else sent to the listener would come before them.
    for node in (a, b):
        publish(node, path, ["marker"], clients)
    assert until_marker(listener, "marker".__eq__, count=2) == []


def serve_expecting_exit(project, env: dict) -> subprocess.CompletedProcess:
    """``asok serve --gevent`` that must stop at start-up; what it printed and its exit code."""
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(free_port())]
    try:
        return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started instead of refusing its settings")


def test_redis_history_without_the_cluster_is_refused_at_start_up_saying_what_to_set(feed_project):
    done = serve_expecting_exit(feed_project, project_env(WS_HISTORY_STORE="redis"))
    assert done.returncode == 2
    assert "WS_ADAPTER=redis" in done.stderr and "WS_HISTORY_STORE=sqlite" in done.stderr


def test_a_history_queue_bound_that_is_no_number_is_refused_at_start_up(feed_project, redis_server):
    done = serve_expecting_exit(feed_project, node_env(redis_server, WS_HISTORY_QUEUE="lots"))
    assert done.returncode == 2 and "WS_HISTORY_QUEUE" in done.stderr
