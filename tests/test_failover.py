"""Redis fails over under Sentinel while two nodes serve clients: nothing silent is lost, no restart.

Real parts: Debian's redis-server (a primary and a replica), three redis-sentinel
processes, two ``asok serve --gevent`` nodes on ``WS_REDIS_URL=redis+sentinel://``,
plain and ``asok-green.v1`` clients (asok_green.client.ResumingClient) on both,
broadcasts at a steady rate from both (tests/failover_support.py). The primary
is killed (SIGKILL) or paused past the sentinels' down-after time (SIGSTOP, then
SIGCONT); a node is killed. And one promotion by hand, on the history store alone.
"""

from __future__ import annotations

import signal
import time

import pytest
import websocket

from asok_green.history.redis_log import StreamLog
from asok_green.history.write_queue import PendingMessage
from tests.asok_project import login, make_project
from tests.conftest import INTROSPECTION, free_port, wait_until
from tests.failover_support import (
    FAILOVER_ROUTES,
    Process,
    Reader,
    Sender,
    SentinelSet,
    need,
    online_on,
    resp,
    sentinel_node,
    tally,
)

pytestmark = pytest.mark.timeout(90)

#: WS_PRESENCE_TTL of the nodes.
TTL = 2.0
#: Broadcasts a second from each of the two nodes.
RATE = 40
#: How long the primary is paused here (past the sentinels' 1 s down-after: it fails over);
#: scripts/failover_bench.py pauses it 10 s.
PAUSE = 3.0


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The test project plus /pub, /live and /feed (tests/failover_support.FAILOVER_ROUTES)."""
    return make_project(tmp_path_factory.mktemp("failover-project"), extra_wsgi=INTROSPECTION + FAILOVER_ROUTES)


@pytest.fixture
def sentinels(tmp_path):
    """A primary, a replica and three sentinels of the test's own; stopped after it."""
    group = SentinelSet(tmp_path)
    yield group
    group.stop()


@pytest.fixture
def cluster(project, sentinels, tmp_path):
    """Nodes A and B on the sentinels' URL, stopped after the test."""
    started = []
    try:
        for _ in range(2):
            started.append(sentinel_node(project, tmp_path, sentinels.url, TTL))
        yield started
    finally:
        for node in started:
            node.stop()


class Scene:
    """Logged-in users on each node, readers of each kind on each node, senders on each node."""

    def __init__(self, nodes, users_on: dict[str, int]):
        """``users_on``: user name -> index of the node their tab is open on."""
        self.nodes = nodes
        self.tabs = []
        self.readers: list[Reader] = []
        self.senders: list[Sender] = []
        for name, index in users_on.items():
            node = nodes[index]
            cookie = login(node.url, name)["asok_session"]
            header = [f"Cookie: asok_session={cookie}"]
            self.tabs.append(websocket.create_connection(f"{node.ws_url}/live/tab", origin=node.url, header=header))

    def start(self, senders_on: list[int], readers_on: list[int]) -> None:
        """Readers of each kind on the nodes ``readers_on``, then senders on ``senders_on``."""
        for index in readers_on:
            node = self.nodes[index]
            self.readers.append(Reader(f"{node.ws_url}/live/fo", "plain", str(index), node.url))
            self.readers.append(Reader(f"{node.ws_url}/feed/fo", "plain-history", str(index), node.url))
            self.readers.append(Reader(f"{node.ws_url}/feed/fo", "v1", str(index), node.url))
        for reader in self.readers:
            reader.start()
        for index in senders_on:
            self.senders.append(Sender(self.nodes[index], f"n{index}", "fo", RATE))
        self.started = time.monotonic()
        for sender in self.senders:
            sender.start()

    def got_since(self, kind: str, since: float) -> bool:
        """True once every reader of ``kind`` got a message sent after ``since``."""
        sent_after = {text for sender in self.senders for at, text in sender.sent if at > since}
        readers = [r for r in self.readers if r.received.kind == kind]
        return all(any(text in sent_after for _, text in r.received.messages) for r in readers)

    def finish(self) -> dict:
        """Stop the senders, wait until every reader has the last message of each, stop; tallies by kind."""
        for sender in self.senders:
            sender.stop()
        ended = time.monotonic()
        last = {sender.sent[-1][1] for sender in self.senders if sender.sent}
        for reader in self.readers:
            wait_until(
                lambda r=reader: last <= {text for _, text in r.received.messages},
                timeout=20,
                what=f"{reader.received.kind} client on node {reader.received.node} got the last messages",
            )
        for reader in self.readers:
            reader.stop()
        sent = [text for sender in self.senders for _, text in sender.sent]
        kinds = {}
        for kind in ("plain", "plain-history", "v1"):
            readers = [r for r in self.readers if r.received.kind == kind]
            kinds[kind] = tally(readers, sent, self.started, ended)
        return kinds

    def close(self) -> None:
        """Stop everything still running."""
        for sender in self.senders:
            sender.stop()
        for reader in self.readers:
            reader.stop()
        for tab in self.tabs:
            try:
                tab.close(timeout=0.5)
            except Exception:
                pass


def presence_right(nodes, expected: list) -> bool:
    """True when every node says exactly ``expected`` (user ids) are online."""
    return all(online_on(node) == sorted(expected) for node in nodes)


def assert_no_silent_gap(kinds: dict) -> None:
    """v1 clients: in order, no duplicate, and every message or a continuity-lost notice."""
    v1 = kinds["v1"]
    assert v1.out_of_order == 0 and v1.duplicates == 0, v1
    assert v1.missing == 0 or v1.continuity_lost > 0, f"a silent gap: {v1}"


def assert_logged_once(node) -> None:
    """One line when Redis went, one when it was back, and no traceback."""
    log = node.log()
    assert log.count("unreachable") == 1, log
    assert log.count("is back:") == 1, log
    assert "Traceback" not in log, log


def user_id(project, name: str) -> int:
    """The id of user ``name`` in the project's database."""
    from tests.cluster_support import user_ids

    return user_ids(project)[name]


def test_primary_killed_nodes_follow_the_promoted_replica(project, sentinels, cluster):
    a, b = cluster
    ids = [user_id(project, "alice"), user_id(project, "bob")]
    scene = Scene(cluster, {"alice": 0, "bob": 1})
    try:
        wait_until(lambda: presence_right(cluster, ids), timeout=10, what="both users online on both nodes")
        scene.start(senders_on=[0, 1], readers_on=[0, 1])
        time.sleep(1.0)
        old = sentinels.primary
        old.signal(signal.SIGKILL)
        promoted, answered = sentinels.wait_failover(old.port)
        for kind in ("plain", "plain-history", "v1"):
            wait_until(lambda k=kind: scene.got_since(k, answered), timeout=20, what=f"{kind} clients get messages")
        # Presence right everywhere within the TTL of the new primary answering (plus slack).
        wait_until(lambda: presence_right(cluster, ids), timeout=TTL + 3, what="presence right on both nodes")
        kinds = scene.finish()
    finally:
        scene.close()
    assert_no_silent_gap(kinds)
    assert kinds["plain"].out_of_order == 0 and kinds["plain"].duplicates == 0, kinds["plain"]
    for node in (a, b):
        assert_logged_once(node)
    assert "role:master" in resp(promoted.port, "INFO", "replication")


def test_primary_paused_past_down_after_nodes_follow_the_promoted_replica(project, sentinels, cluster):
    a, b = cluster
    ids = [user_id(project, "alice"), user_id(project, "bob")]
    scene = Scene(cluster, {"alice": 0, "bob": 1})
    try:
        wait_until(lambda: presence_right(cluster, ids), timeout=10, what="both users online on both nodes")
        scene.start(senders_on=[0, 1], readers_on=[0, 1])
        time.sleep(1.0)
        old = sentinels.primary
        old.signal(signal.SIGSTOP)
        try:
            promoted, answered = sentinels.wait_failover(old.port)
            time.sleep(max(0.0, PAUSE - 1.5))
        finally:
            old.signal(signal.SIGCONT)
        for kind in ("plain", "plain-history", "v1"):
            wait_until(lambda k=kind: scene.got_since(k, answered), timeout=20, what=f"{kind} clients get messages")
        wait_until(lambda: presence_right(cluster, ids), timeout=TTL + 3, what="presence right on both nodes")
        # The old primary, back, is made a replica of the new one: writes never go to it.
        wait_until(lambda: "role:slave" in resp(old.port, "INFO", "replication"), timeout=20, what="demoted")
        kinds = scene.finish()
    finally:
        scene.close()
    assert_no_silent_gap(kinds)
    for node in (a, b):
        assert "Traceback" not in node.log()
        assert node.log().count("unreachable") == 1


def test_a_primary_back_from_a_pause_shorter_than_the_timeouts_is_left_for_the_promoted_one(
    project, sentinels, tmp_path
):
    # A TTL of 6 s gives 5 s socket timeouts: the nodes' calls outlive the pause and are answered
    # by the old primary, still a primary until the sentinels demote it (seconds later).
    nodes = [sentinel_node(project, tmp_path, sentinels.url, 6.0) for _ in range(2)]
    try:
        old = sentinels.primary
        old.signal(signal.SIGSTOP)
        try:
            promoted, _ = sentinels.wait_failover(old.port)
        finally:
            old.signal(signal.SIGCONT)

        def subscribed_to(port: int) -> int:
            answer = resp(port, "PUBSUB", "NUMSUB", "asok:ws:presence")
            return int(answer.split("\r\n")[-2].lstrip(":"))

        wait_until(lambda: subscribed_to(promoted.port) == 2, timeout=20, what="both nodes on the new primary")
        # They moved on their own (the heartbeat asks the sentinels, who said the primary was down,
        # then named the new one): the old primary was still a primary, not yet told to follow.
        assert "role:master" in resp(old.port, "INFO", "replication")
        for node in nodes:
            node.wait_for_log("is back:", timeout=10)
            assert_logged_once(node)
    finally:
        for node in nodes:
            node.stop()


def test_node_killed_its_users_go_offline_everywhere_under_sentinel(project, sentinels, cluster):
    a, b = cluster
    alice, bob = user_id(project, "alice"), user_id(project, "bob")
    scene = Scene(cluster, {"alice": 0, "bob": 1})
    try:
        wait_until(lambda: presence_right(cluster, [alice, bob]), timeout=10, what="both users online")
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        # The deadline is the event: offline within two TTLs (plus slack).
        wait_until(lambda: online_on(a) == [alice], timeout=TTL * 2 + 3, what="bob offline on node A")
    finally:
        scene.close()


def test_a_promoted_replica_starts_a_new_epoch_at_the_next_write(tmp_path):
    import redis

    server = need("redis-server")
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    common += ["--repl-diskless-sync-delay", "0"]
    first_port, second_port = free_port(), free_port()
    first = Process([server, "--port", str(first_port), *common], first_port, tmp_path, "primary")
    replica_of = ["--replicaof", "127.0.0.1", str(first_port)]
    second = Process([server, "--port", str(second_port), *replica_of, *common], second_port, tmp_path, "replica")
    try:
        old, new = redis.Redis(port=first_port), redis.Redis(port=second_port)
        wait_until(lambda: new.info("replication").get("master_link_status") == "up", what="replica in sync")
        log = StreamLog(old, "asok:ws", "node-a", "asok:ws:history")
        sized = lambda stream: (100, None)  # noqa: E731
        two = [PendingMessage(1, "/s", 1, b"a", None), PendingMessage(2, "/s", 1, b"b", None)]
        first_writes = log.append(1, two, sized)
        epoch = first_writes[0][0]
        assert first_writes == [(epoch, 1), (epoch, 2)]
        assert log.append(2, [PendingMessage(3, "/s", 1, b"c", None)], sized) == [(epoch, 3)]
        assert old.wait(1, 2000) == 1
        new.execute_command("REPLICAOF", "NO", "ONE")  # promoted, as Sentinel does
        promoted = StreamLog(new, "asok:ws", "node-a", "asok:ws:history")
        [(renewed, offset)] = promoted.append(3, [PendingMessage(4, "/s", 1, b"d", None)], sized)
        assert renewed != epoch and offset == 1
        # Written again on the same primary: the epoch holds.
        assert promoted.append(4, [PendingMessage(5, "/s", 1, b"e", None)], sized) == [(renewed, 2)]
        old.close()
        new.close()
    finally:
        second.stop()
        first.stop()


def test_a_new_epoch_begun_before_this_node_subscribed_is_delivered_from_its_first_message(tmp_path):
    import json
    from collections import Counter
    from types import SimpleNamespace

    import gevent
    import redis

    from asok_green.history.redis_store import RedisHistoryStore

    server = need("redis-server")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    process = Process(argv, port, tmp_path, "redis")
    client = redis.Redis(port=port)
    delivered = []
    cluster = SimpleNamespace(
        redis=client,
        settings=SimpleNamespace(prefix="asok:ws"),
        node_id="node-a",
        history_channel="asok:ws:history",
        redis_errors=(redis.RedisError, OSError),
        address=f"redis://127.0.0.1:{port}",
        connected=True,
        attach_history=lambda store: None,
    )
    hub = SimpleNamespace(cluster=cluster, stats=Counter(), deliver_stream=lambda *args: delivered.append(args[1:3]))
    store = RedisHistoryStore()
    try:
        store.start(hub)

        def published(epoch: str, offset: int) -> bytes:
            return json.dumps(["/s", epoch, offset, 1, "node-b", offset]).encode() + b"\n" + f"m{offset}".encode()

        store.received(published("old", 5))
        # Node B wrote a new epoch (Redis came back empty, or failed over) before this node listened again.
        other = StreamLog(client, "asok:ws", "node-b", "asok:ws:elsewhere")
        three = [PendingMessage(i, "/s", 1, f"m{i}".encode(), None) for i in (1, 2, 3)]
        written = other.append(1, three, lambda stream: (100, None))
        epoch = written[0][0]
        store.received(published(epoch, 3))
        assert delivered == [("old", 5), (epoch, 1), (epoch, 2), (epoch, 3)]
        store.received(published(epoch, 4))
        assert delivered[-1] == (epoch, 4) and len(delivered) == 5

        # This node's own first message of a new epoch, after other nodes' that it missed.
        store.received(json.dumps(["/t", "older", 9, 1, "node-b", 2]).encode() + b"\n")
        written = other.append(2, [PendingMessage(9, "/t", 1, b"t1", None)], lambda stream: (100, None))
        t_epoch = written[0][0]
        own = []
        store.publish("/t", 1, b"t2", lambda e, o: own.append((e, o)))
        for _ in range(100):  # the store's writer is a greenlet: let it run
            if store.queue.unechoed and store.queue.unechoed[next(iter(store.queue.unechoed))].epoch:
                break
            gevent.sleep(0.05)
        seq = next(iter(store.queue.unechoed))
        store.received(json.dumps(["/t", t_epoch, 2, 1, "node-a", seq]).encode() + b"\nt2")
        assert delivered[-1] == (t_epoch, 1) and own == [(t_epoch, 2)]
    finally:
        store.stop()
        client.close()
        process.stop()
