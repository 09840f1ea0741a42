"""Room presence across nodes: real `asok serve --gevent` processes sharing one real redis-server.

A user is in room R while any of their connections, on any live node, is in R:
"joined" and "left" are announced once per cluster-wide change, on every node, to
that node's members of R, and ``get_presence`` with a room lists everyone. Events
about a node that is not live (declared down, or never synced) are ignored.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.asok_project import login, make_project
from tests.cluster_support import (
    NODE_ROUTES,
    TTL,
    RedisServer,
    recv_json,
    start_node,
    user_ids,
)
from tests.conftest import INTROSPECTION

pytestmark = pytest.mark.timeout(90)

ROOM = "team"
PRESENCE_CHANNEL = "asok:ws:presence"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("room-presence"), extra_wsgi=INTROSPECTION + NODE_ROUTES)


@pytest.fixture(scope="module")
def users(project) -> dict[str, int]:
    return user_ids(project)


@pytest.fixture(scope="module")
def nodes(project, start_nodes):
    """Nodes A and B."""
    return start_nodes(project, 2)


@pytest.fixture(scope="module")
def cookies(nodes):
    return {name: login(nodes[0].url, name) for name in ("alice", "bob")}


def is_room_presence(message: dict) -> bool:
    return message.get("type") == "room_presence"


def room_users(client, room: str = ROOM) -> list:
    """``get_presence`` for ``room``, as a member asks it."""
    client.send(json.dumps({"op": "get_presence", "room": room}))
    return recv_json(client, lambda m: m.get("type") == "presence_list" and m.get("room") == room)["users"]


def online_users(client) -> list:
    client.send(json.dumps({"op": "get_presence"}))
    return recv_json(client, lambda m: m.get("type") == "presence_list" and "room" not in m)["users"]


def join(client, room: str = ROOM) -> None:
    client.send(json.dumps({"op": "join_room", "room": room}))
    room_users(client, room)  # answered in order: the join is done


def room_events_until_answer(client, room: str = ROOM) -> list[dict]:
    """The room_presence messages ``client`` receives before the answer to a get_presence sent now."""
    client.send(json.dumps({"op": "get_presence", "room": room}))
    events = []
    while True:
        message = recv_json(client, lambda m: is_room_presence(m) or m.get("type") == "presence_list")
        if message.get("type") == "presence_list":
            return events
        events.append(message)


def left(room: str, user_id: int) -> dict:
    return {"op": "broadcast", "type": "room_presence", "room": room, "user_id": user_id, "status": "left"}


def joined(room: str, user_id: int) -> dict:
    return {"op": "broadcast", "type": "room_presence", "room": room, "user_id": user_id, "status": "joined"}


def settle(client_a, client_b) -> None:
    """Wait until both nodes have handled what was published so far.

    A broadcast from each node to the room makes a round trip through Redis; once
    both arrive on the other node, every presence event published before them
    has been read there too (one subscriber reads them in order).
    """
    for sender, receiver in ((client_a, client_b), (client_b, client_a)):
        token = f"settle-{id(sender)}"
        sender.send(json.dumps({"op": "typing", "room": ROOM, "typing": token}))
        recv_json(receiver, lambda m: m.get("type") == "typing")


def test_a_user_with_tabs_on_two_nodes_leaves_a_room_once_everywhere(nodes, cookies, users, clients):
    a, b = nodes
    alice, bob = users["alice"], users["bob"]
    bob_on_a = clients.connect(a, "/asok/live", cookies=cookies["bob"])
    guest_on_b = clients.connect(b, "/asok/live")
    join(bob_on_a)
    join(guest_on_b)

    alice_on_a = clients.connect(a, "/asok/live", cookies=cookies["alice"])
    join(alice_on_a)
    for member in (bob_on_a, guest_on_b):
        assert recv_json(member, lambda m: is_room_presence(m) and m["user_id"] == alice) == joined(ROOM, alice)

    alice_on_b = clients.connect(b, "/asok/live", cookies=cookies["alice"])
    join(alice_on_b)
    settle(bob_on_a, guest_on_b)
    # Everyone in the room, on either node, is listed on both.
    assert sorted(room_users(guest_on_b)) == sorted([alice, bob])
    assert sorted(room_users(bob_on_a)) == sorted([alice, bob])
    assert room_events_until_answer(bob_on_a) == []
    assert room_events_until_answer(guest_on_b) == [], "a second tab on another node was announced again"

    alice_on_a.close()
    settle(bob_on_a, guest_on_b)
    assert room_events_until_answer(bob_on_a) == [], "closing one of two tabs announced 'left'"
    assert room_events_until_answer(guest_on_b) == [], "closing one of two tabs announced 'left'"
    assert alice in room_users(bob_on_a)

    alice_on_b.close()
    for member in (bob_on_a, guest_on_b):
        assert recv_json(member, is_room_presence) == left(ROOM, alice)
        assert room_users(member) == [bob]


def test_room_presence_is_kept_in_redis_per_node(nodes, redis_server, cookies, users, clients):
    a, _ = nodes
    info = clients.node_info(a, cookies=cookies["alice"])
    alice_live = clients.connect(a, "/asok/live", cookies=cookies["alice"])
    join(alice_live, "redis-kept")
    key = f"asok:ws:presence:rooms:{info['node']}"
    member = json.dumps(["redis-kept", users["alice"]])
    deadline = time.monotonic() + 5
    while redis_server.command("SISMEMBER", key, member) != ":1":
        assert time.monotonic() < deadline, f"{member} never written to {key}"
        time.sleep(0.05)
    alice_live.close()
    while redis_server.command("SISMEMBER", key, member) != ":0":
        assert time.monotonic() < deadline + 5, f"{member} never removed from {key}"
        time.sleep(0.05)


def test_killed_node_users_leave_their_rooms_everywhere_after_the_ttl(
    nodes, project, redis_server, cookies, users, clients, tmp_path
):
    a, _ = nodes
    alice = users["alice"]
    doomed = start_node(project, tmp_path, redis_server)
    try:
        bob_on_a = clients.connect(a, "/asok/live", cookies=cookies["bob"])
        join(bob_on_a, "doomed-room")
        alice_on_doomed = clients.connect(doomed, "/asok/live", cookies=cookies["alice"])
        join(alice_on_doomed, "doomed-room")
        assert recv_json(bob_on_a, is_room_presence) == joined("doomed-room", alice)
        assert alice in room_users(bob_on_a, "doomed-room")

        doomed.proc.send_signal(signal.SIGKILL)
        assert recv_json(bob_on_a, is_room_presence, timeout=TTL * 2 + 5) == left("doomed-room", alice)
        assert room_users(bob_on_a, "doomed-room") == [users["bob"]]
    finally:
        clients.close_all()
        doomed.stop()


def publish(redis_server: RedisServer, name: str, node: str, msg, **extra) -> None:
    event = {"target": "presence", "name": name, "msg": msg, "node_id": node, **extra}
    assert redis_server.command("PUBLISH", PRESENCE_CHANNEL, json.dumps(event)).startswith(":")


def test_events_from_a_node_that_is_down_are_ignored(nodes, redis_server, clients):
    a, b = nodes
    watchers = [clients.connect(node, "/asok/live") for node in nodes]
    for watcher in watchers:
        online_users(watcher)  # answered: the watcher is registered and gets presence
    publish(redis_server, "sync", "ghost-node", [9001], rooms=[[ROOM, 9001]])
    for watcher in watchers:
        recv_json(watcher, lambda m: m.get("type") == "presence" and m["user_id"] == 9001)
    publish(redis_server, "down", "ghost-node", "ghost-node")
    for watcher in watchers:
        assert recv_json(watcher, lambda m: m.get("type") == "presence" and m["user_id"] == 9001)["status"] == (
            "offline"
        )

    # Late events of the dead node (as a frozen node's publisher would send them) ...
    publish(redis_server, "add", "ghost-node", [9002])
    publish(redis_server, "join", "ghost-node", [[ROOM, 9002]])
    publish(redis_server, "remove", "never-synced-node", [9003])
    publish(redis_server, "add", "never-synced-node", [9003])
    # ... then an event that is applied: once it is seen, the ones before it were read.
    publish(redis_server, "sync", "marker-node", [9004])
    for watcher in watchers:
        recv_json(watcher, lambda m: m.get("type") == "presence" and m["user_id"] == 9004)
        online = online_users(watcher)
        assert 9002 not in online and 9003 not in online, online
    publish(redis_server, "down", "marker-node", "marker-node")
    for watcher in watchers:
        recv_json(watcher, lambda m: m.get("type") == "presence" and m["user_id"] == 9004)
