"""Several server processes as one server, through a real redis-server.

Three `asok serve --gevent` processes (nodes A, B and C, on three ports) share
one Redis with `WS_ADAPTER=redis`; real clients connect to each. Other tests
start their own nodes: one killed with SIGKILL, two that live through a Redis
restart, an Asok node with Asok's own RedisWebSocketAdapter, and
`asok serve --gevent --workers 2`.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys

import pytest
import websocket

from tests.asok_project import fetch, login, make_project, project_env
from tests.cluster_support import (
    NODE_ROUTES,
    TTL,
    node_env,
    presence_of,
    recv_json,
    recv_texts,
    start_node,
    user_ids,
)
from tests.conftest import BIN, INTROSPECTION, ServerProcess, free_port, until_marker, wait_until, ws_connect

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def cluster_project(tmp_path_factory):
    """The test project, plus /node (which process answers) and /fanout (broadcast as received)."""
    return make_project(tmp_path_factory.mktemp("cluster-project"), extra_wsgi=INTROSPECTION + NODE_ROUTES)


@pytest.fixture(scope="module")
def users(cluster_project) -> dict[str, int]:
    """name -> user id, from the project's database."""
    return user_ids(cluster_project)


@pytest.fixture(scope="module")
def nodes(cluster_project, start_nodes):
    """Nodes A, B and C."""
    return start_nodes(cluster_project, 3)


@pytest.fixture
def cookies(nodes):
    """Session cookies of alice and bob, valid on every node (SESSION_BACKEND=file)."""
    return {name: login(nodes[0].url, name) for name in ("alice", "bob")}


def online_on(node) -> list:
    """``ws.get_online_users()`` as the node answers it."""
    client = ws_connect(node, "/introspect")
    client.send("{}")
    answer = recv_json(client, lambda m: "online" in m)
    client.close()
    return answer["online"]


def on_path(node, path: str) -> int:
    """How many connections ``node`` holds on ``path``."""
    client = ws_connect(node, "/introspect")
    client.send(json.dumps({"paths": [path]}))
    answer = recv_json(client, lambda m: "on_path" in m)
    client.close()
    return answer["on_path"][path]


@pytest.fixture(autouse=True)
def everyone_offline_afterwards(request):
    """After each test using the shared nodes, wait until no user is online on any of them."""
    yield
    if "nodes" in request.fixturenames:
        for node in request.getfixturevalue("nodes"):
            wait_until(lambda node=node: online_on(node) == [], what=f"everyone offline on {node.url}")


def drain(client, quiet: float = 0.4) -> list:
    """Every message that arrives until none has come for ``quiet`` seconds."""
    got = []
    client.settimeout(quiet)
    while True:
        try:
            got.append(client.recv())
        except websocket.WebSocketTimeoutException:
            return got


def presence(user_id: int, status: str) -> dict:
    """The presence broadcast of ``user_id`` going ``status``."""
    return {"op": "broadcast", "type": "presence", "user_id": user_id, "status": status}


def is_json(expected: dict):
    """A marker for :func:`until_marker`: the message that is ``expected`` in JSON."""
    return lambda message: json.loads(message) == expected


def presence_list(client) -> list:
    """Ask for ``get_presence`` on /asok/live; the users of the answer."""
    client.send(json.dumps({"op": "get_presence"}))
    return recv_json(client, lambda m: m.get("type") == "presence_list")["users"]


def join(client, room: str) -> None:
    """Join ``room`` on /asok/live; returns once the server has handled the join."""
    client.send(json.dumps({"op": "join_room", "room": room}))
    presence_list(client)  # answered in order, so the join is done


# -- broadcasts ------------------------------------------------------------------


def test_broadcast_reaches_every_client_on_every_node_exactly_once(nodes, clients):
    a, b, c = nodes
    chat = [clients.connect(node, "/chat/once") for node in (a, a, b, c)]
    elsewhere = clients.connect(b, "/chat/other")
    chat[2].send("from B")
    chat[0].send("from A")
    chat[3].send("from C")
    expected = collections.Counter(["Guest: from A", "Guest: from B", "Guest: from C"])
    for client in chat:
        assert collections.Counter(recv_texts(client, 3)) == expected
    # A marker from each node, sent after every copy was published: a duplicate arrives before them.
    for sender, name in ((chat[0], "A"), (chat[2], "B"), (chat[3], "C")):
        sender.send(f"marker {name}")
    for node, name in ((a, "A"), (c, "C")):
        clients.connect(node, "/chat/other").send(f"marker {name}")
    elsewhere.send("marker B")
    markers = {f"Guest: marker {name}" for name in "ABC"}
    for client in chat:
        assert until_marker(client, markers.__contains__, count=3) == []
    assert until_marker(elsewhere, markers.__contains__, count=3) == []


def test_broadcast_json_and_binary_cross_nodes(nodes, clients):
    a, b, c = nodes
    json_c = clients.connect(c, "/json")
    clients.connect(a, "/json").send("hello")
    assert recv_texts(json_c, 1) == ['{"echo": "hello"}']
    binary_a, binary_b = clients.connect(a, "/fanout"), clients.connect(b, "/fanout")
    binary_b.send_binary(b"\x00\xffraw")
    for client in (binary_a, binary_b):
        frame = client.recv_frame()
        assert (frame.opcode, frame.data) == (websocket.ABNF.OPCODE_BINARY, b"\x00\xffraw")


def test_broadcast_from_a_page_reaches_sockets_on_other_nodes(nodes, clients):
    a, b, c = nodes
    listeners = [clients.connect(node, "/notifications") for node in (a, c)]
    for listener in listeners:
        assert listener.recv() == "Connected to notification stream"
    assert fetch(b.url + "/notify?msg=deploy%20done").text == "sent"
    for listener in listeners:
        assert recv_texts(listener, 1) == ["deploy done"]


# -- presence ----------------------------------------------------------------------


def test_presence_is_cluster_wide_with_counts_across_nodes(nodes, cookies, users, clients):
    a, b, c = nodes
    alice, bob = users["alice"], users["bob"]
    watchers = [clients.connect(node, "/asok/live") for node in nodes]

    def is_alice(message: str) -> bool:
        return presence_of(alice)(json.loads(message))

    first_tab = clients.connect(a, "/chat/presence", cookies=cookies["alice"])
    for watcher in watchers:
        assert recv_json(watcher, presence_of(alice))["status"] == "online"

    second_tab = clients.connect(b, "/chat/presence", cookies=cookies["alice"])
    # The marker: bob comes online on the same node, after alice's second tab registered there.
    bob_tab = clients.connect(b, "/chat/presence", cookies=cookies["bob"])
    for watcher in watchers:
        assert not [m for m in until_marker(watcher, is_json(presence(bob, "online"))) if is_alice(m)]
    for watcher in watchers:
        # Nothing new was announced: the next presence message is the answer to get_presence.
        watcher.send(json.dumps({"op": "get_presence"}))
        answer = recv_json(watcher, lambda m: m.get("type") in ("presence", "presence_list"))
        assert answer["type"] == "presence_list" and alice in answer["users"]
    assert alice in online_on(c)

    first_tab.close()
    wait_until(lambda: on_path(a, "/chat/presence") == 0, what="the first tab's close handled")
    # The markers: bob goes offline, then comes online again on node A, after the close there.
    bob_tab.close()
    for watcher in watchers:
        assert not [m for m in until_marker(watcher, is_json(presence(bob, "offline"))) if is_alice(m)]
    clients.connect(a, "/chat/presence", cookies=cookies["bob"])
    for watcher in watchers:
        assert not [m for m in until_marker(watcher, is_json(presence(bob, "online"))) if is_alice(m)]
    for watcher in watchers:
        watcher.send(json.dumps({"op": "get_presence"}))
        answer = recv_json(watcher, lambda m: m.get("type") in ("presence", "presence_list"))
        assert answer["type"] == "presence_list" and alice in answer["users"], (watchers.index(watcher), answer)

    second_tab.close()
    for watcher in watchers:
        assert recv_json(watcher, presence_of(alice)) == {
            "op": "broadcast",
            "type": "presence",
            "user_id": alice,
            "status": "offline",
        }
        assert alice not in presence_list(watcher)


def test_typing_and_receipts_reach_room_members_on_other_nodes(nodes, cookies, users, clients):
    a, b, c = nodes
    alice_conn = clients.connect(a, "/asok/live", cookies=cookies["alice"])
    bob_conn = clients.connect(b, "/asok/live", cookies=cookies["bob"])
    guest_in_room = clients.connect(c, "/asok/live")
    guest_outside = clients.connect(c, "/asok/live")
    for client in (alice_conn, bob_conn, guest_in_room):
        join(client, "team")

    alice_conn.send(json.dumps({"op": "typing", "room": "team", "typing": True}))
    typing = {"op": "broadcast", "type": "typing", "room": "team", "user_id": users["alice"], "typing": True}
    for client in (bob_conn, guest_in_room):
        assert recv_json(client, lambda m: m.get("type") == "typing") == typing

    bob_conn.send(json.dumps({"op": "receipt", "room": "team", "message_id": 7, "status": "read"}))
    receipt = {
        "op": "broadcast",
        "type": "receipt",
        "room": "team",
        "message_id": 7,
        "user_id": users["bob"],
        "status": "read",
    }
    assert recv_json(guest_in_room, lambda m: m.get("type") == "receipt") == receipt

    def kinds(client, *markers):
        """The types of what ``client`` got before ``markers`` (exact messages, in JSON)."""
        got = until_marker(client, lambda m: json.loads(m) in markers, count=len(markers))
        return [json.loads(m).get("type") for m in got]

    # bob's receipt, from node B, was published after alice's typing: alice gets her own typing before it.
    assert "typing" not in kinds(alice_conn, receipt), "the sender got its own typing indicator"
    # alice goes offline on node A after bob's receipt was published, and bob after alice's typing.
    alice_conn.close()
    assert "receipt" not in kinds(bob_conn, presence(users["alice"], "offline")), "the sender got its own receipt"
    bob_conn.close()
    room_traffic = kinds(guest_outside, presence(users["alice"], "offline"), presence(users["bob"], "offline"))
    assert not {"typing", "receipt"} & set(room_traffic), "a non-member got room traffic"


# -- failures ------------------------------------------------------------------------


def test_killed_node_users_go_offline_everywhere_after_the_ttl(
    nodes, cluster_project, redis_server, cookies, users, clients
):
    a = nodes[0]
    doomed = start_node(cluster_project, a.log_path.parent, redis_server)
    try:
        watcher = clients.connect(a, "/asok/live")
        alice_tab = clients.node_info(doomed, cookies=cookies["alice"])
        assert recv_json(watcher, presence_of(users["alice"]))["status"] == "online"
        node_key = f"asok:ws:presence:node:{alice_tab['node']}"
        assert redis_server.command("EXISTS", node_key) == ":1"

        doomed.proc.send_signal(signal.SIGKILL)
        # The deadline is the event: offline within two TTLs (plus slack), never "eventually".
        offline = recv_json(watcher, presence_of(users["alice"]), timeout=TTL * 2 + 3)
        assert offline["status"] == "offline"
        assert users["alice"] not in online_on(a)
        assert redis_server.command("EXISTS", node_key) == ":0"
        assert redis_server.command("ZSCORE", "asok:ws:presence:nodes", alice_tab["node"]) == "$-1"
    finally:
        clients.close_all()
        doomed.stop()


def test_redis_restart_local_delivery_goes_on_then_the_cluster_heals(
    cluster_project, tmp_path, own_redis, cookies, users, clients
):
    first, second = (start_node(cluster_project, tmp_path, own_redis) for _ in range(2))
    try:
        watcher = clients.connect(second, "/asok/live")
        alice_tab = clients.connect(first, "/chat/outage", cookies=cookies["alice"])
        assert recv_json(watcher, presence_of(users["alice"]))["status"] == "online"
        sender, local_peer = clients.connect(first, "/chat/outage"), clients.connect(first, "/chat/outage")

        own_redis.stop()
        for i in range(20):
            sender.send(f"during outage {i}")
        expected = [f"Guest: during outage {i}" for i in range(20)]
        assert recv_texts(local_peer, 20) == expected
        bob_tab = clients.connect(first, "/chat/outage", cookies=cookies["bob"])
        first.wait_for_log("unreachable")

        own_redis.start()
        first.wait_for_log("is back", timeout=10)
        second.wait_for_log("is back", timeout=10)
        # Everything logged during the outage came before "is back".
        assert first.log().count("unreachable") == 1, "an outage is logged once, not per message"
        # bob connected while Redis was down: republished, so the other node announces him,
        # and alice, online on the same node all along, never went offline there.
        seen: list[dict] = []
        bob_online = recv_json(watcher, lambda m: seen.append(m) or presence_of(users["bob"])(m), timeout=5)
        assert bob_online["status"] == "online"
        assert not [m for m in seen if presence_of(users["alice"])(m)], "alice flapped during the outage"
        assert {users["alice"], users["bob"]} <= set(presence_list(watcher))
        node_key = f"asok:ws:presence:node:{clients.node_info(first)['node']}"
        for user in ("alice", "bob"):
            assert own_redis.command("SISMEMBER", node_key, str(users[user])) == ":1"
        remote_peer = clients.connect(second, "/chat/outage")
        sender.send("after the outage")
        assert recv_texts(remote_peer, 1, timeout=5) == ["Guest: after the outage"]
        alice_tab.close()
        bob_tab.close()
        for user in ("alice", "bob"):
            assert recv_json(watcher, presence_of(users[user]))["status"] == "offline"
    finally:
        clients.close_all()
        first.stop()
        second.stop()


# -- Asok's own adapter on the same Redis --------------------------------------------

ASOK_NODE = """
import sys, time
from asok.ws.adapter import RedisWebSocketAdapter
from asok.ws.server import WebSocketServer

port, url = int(sys.argv[1]), sys.argv[2]
ws = WebSocketServer(host="127.0.0.1", port=port, secret_key="k" * 32, adapter=RedisWebSocketAdapter(redis_url=url))


@ws.on("/chat/[room]")
def on_message(conn, message):
    ws.broadcast(conn.path, "asok node: " + message)


@ws.on("/room")
def on_room(conn, message):
    ws.broadcast_to("team", "asok room: " + message)


ws.start()
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_interop_with_asok_redis_adapter_both_ways(nodes, redis_server, tmp_path, clients):
    a, b = nodes[0], nodes[1]
    port = free_port()
    script = tmp_path / "asok_node.py"
    script.write_text(ASOK_NODE)
    log = tmp_path / "asok-node.log"
    patterns = int(redis_server.command("PUBSUB", "NUMPAT")[1:])
    asok_node = ServerProcess(
        [sys.executable, str(script), str(port), redis_server.url], tmp_path, project_env(), port, log
    )
    try:
        # Asok subscribes in a thread of its own after start() returned: wait for its pattern.
        wait_until(lambda: redis_server.command("PUBSUB", "NUMPAT") == f":{patterns + 1}", what="Asok subscribed")
        asok_client = websocket.create_connection(
            f"ws://127.0.0.1:{port}/chat/mixed", origin=f"http://127.0.0.1:{port}", timeout=5
        )
        clients.opened.append(asok_client)
        ours = clients.connect(a, "/chat/mixed")

        ours.send("from asok_green")
        assert recv_texts(asok_client, 1) == ["Guest: from asok_green"]

        asok_client.send("from asok")
        assert recv_texts(ours, 2) == ["Guest: from asok_green", "asok node: from asok"]

        room_member = clients.connect(b, "/asok/live")
        join(room_member, "team")
        asok_room = websocket.create_connection(f"ws://127.0.0.1:{port}/room", origin=f"http://127.0.0.1:{port}")
        clients.opened.append(asok_room)
        asok_room.send("hi")
        assert recv_texts(room_member, 1) == ["asok room: hi"]
    finally:
        clients.close_all()
        asok_node.stop()


# -- asok serve --gevent --workers N ---------------------------------------------------


def test_workers_share_one_port_and_act_as_one_server(cluster_project, redis_server, tmp_path, users, clients):
    port = free_port()
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(port), "--workers", "2"]
    env = node_env(redis_server)
    server = ServerProcess(argv, cluster_project, env, port, tmp_path / "workers.log")
    try:
        server.wait_for_log("with 2 worker processes", timeout=30)
        cookies = login(server.url, "alice")
        by_pid: dict[int, list] = collections.defaultdict(list)
        for _ in range(40):
            info = clients.node_info(server)
            by_pid[info["pid"]].append(info["client"])
            if len(by_pid) == 2:
                break
        assert len(by_pid) == 2, "the kernel never handed a connection to the second worker"
        worker_pids = list(by_pid)
        listeners = [clients.connect(server, "/fanout") for _ in range(8)]
        listeners[0].send("one for all")
        for listener in listeners:
            assert recv_texts(listener, 1) == ["one for all"]
            assert drain(listener, quiet=0.2) == []

        watcher = clients.connect(server, "/asok/live")
        alice_tab = clients.connect(server, "/asok/live", cookies=cookies)
        assert recv_json(watcher, presence_of(users["alice"]))["status"] == "online"
        alice_tab.close()
        assert recv_json(watcher, presence_of(users["alice"]))["status"] == "offline"

        clients.close_all()
        assert server.stop(signal.SIGTERM) == 0
        for pid in worker_pids:
            wait_until(lambda pid=pid: not _alive(pid), what=f"worker {pid} gone")
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_workers_without_a_redis_url_exit_2_saying_so(cluster_project):
    env = project_env()
    env.pop("WS_REDIS_URL", None)
    done = subprocess.run(
        [str(BIN / "asok"), "serve", "--gevent", "--port", str(free_port()), "--workers", "2"],
        cwd=cluster_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers 2 needs Redis" in done.stderr and "WS_REDIS_URL" in done.stderr
