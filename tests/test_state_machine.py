"""HubState under random sequences of changes, checked against a plain model after every step.

Hypothesis drives one :class:`HubState` through opens (with and without a
reserved slot), closes, joins, leaves, reservations, and remote nodes that
sync, add, remove and go down, some of them about nodes that are not live.
Beside it runs the model: the open connections with their path, user and
rooms, the live nodes with what they hold, the reservations. After each step:

- the state holds exactly what the model holds: paths, rooms (only open
  connections, no empty entry), per-user and per-room counts, what the live
  nodes hold, the reservations, and ``count``;
- a user is online iff a connection here or a live node holds them, in a room
  iff one of their connections here or a live node holds them in it;
- reservations plus open connections never exceed the capacity;
- the step's announcements are exactly the changes of the cluster-wide views
  (online users, room presence) and of what this node holds, each once, and a
  user's rooms are announced left before the user goes offline and after the
  user comes online.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule

from asok_green.core.state import (
    AtCapacity,
    HubState,
    LocalRoomUserAdded,
    LocalRoomUserRemoved,
    LocalUserAdded,
    LocalUserRemoved,
    RoomJoined,
    RoomLeft,
    UserOffline,
    UserOnline,
)

pytestmark = pytest.mark.quick

CAPACITY = 5
PATHS = st.sampled_from(["/a", "/b"])
USERS = st.sampled_from([None, 1, 2, 3])
REMOTE_USERS = st.sampled_from([1, 2, 3, 4])
ROOMS = st.sampled_from(["r", "s", "t"])
NODES = st.sampled_from(["n1", "n2"])
TOKENS = st.sampled_from(["t1", "t2", "t3"])
PAIRS = st.tuples(ROOMS, REMOTE_USERS)


class Conn:
    """A connection as the hub gives it to the state: an opaque, hashable key."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self._ids)

    def __repr__(self) -> str:
        return f"conn{self.id}"


class HubStateMachine(RuleBasedStateMachine):
    """HubState and its model, changed together."""

    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.state = HubState()
        #: open connection -> [path, user, rooms]
        self.open_conns: dict[Conn, list] = {}
        #: live node -> (users, (room, user) pairs)
        self.nodes: dict[str, tuple[set, set]] = {}
        self.reservations: set[str] = set()

    # -- the model's views -------------------------------------------------------------

    def online(self) -> set:
        local = {user for _, user, _ in self.open_conns.values() if user is not None}
        return local.union(*(users for users, _ in self.nodes.values()))

    def in_rooms(self) -> set:
        local = {(room, user) for _, user, rooms in self.open_conns.values() if user is not None for room in rooms}
        return local.union(*(pairs for _, pairs in self.nodes.values()))

    def held(self) -> set:
        return {user for _, user, _ in self.open_conns.values() if user is not None}

    def held_pairs(self) -> set:
        return {(room, user) for _, user, rooms in self.open_conns.values() if user is not None for room in rooms}

    def snapshot(self) -> tuple:
        return self.online(), self.in_rooms(), self.held(), self.held_pairs()

    def check_announcements(self, out: list, before: tuple) -> None:
        """``out`` says exactly what changed between ``before`` and now, each change once, in a client's order."""
        online, rooms, held, pairs = before
        online2, rooms2, held2, pairs2 = self.snapshot()
        expected = Counter(
            [UserOnline(u) for u in online2 - online]
            + [UserOffline(u) for u in online - online2]
            + [RoomJoined(r, u) for r, u in rooms2 - rooms]
            + [RoomLeft(r, u) for r, u in rooms - rooms2]
            + [LocalUserAdded(u) for u in held2 - held]
            + [LocalUserRemoved(u) for u in held - held2]
            + [LocalRoomUserAdded(r, u) for r, u in pairs2 - pairs]
            + [LocalRoomUserRemoved(r, u) for r, u in pairs - pairs2]
        )
        assert Counter(out) == expected
        position = {item: i for i, item in enumerate(out)}
        for item in out:
            if isinstance(item, RoomLeft) and UserOffline(item.user_id) in position:
                assert position[item] < position[UserOffline(item.user_id)], out
            if isinstance(item, RoomJoined) and UserOnline(item.user_id) in position:
                assert position[item] > position[UserOnline(item.user_id)], out

    # -- capacity ------------------------------------------------------------------------

    @rule(token=TOKENS)
    def reserve(self, token):
        free = token in self.reservations or len(self.open_conns) + len(self.reservations) < CAPACITY
        assert self.state.reserve(token, CAPACITY) is free
        if free:
            self.reservations.add(token)

    @rule(token=TOKENS)
    def release(self, token):
        self.state.release(token)
        self.reservations.discard(token)

    # -- this node's connections ------------------------------------------------------------

    @rule(target=conns, path=PATHS, user=USERS, token=st.none() | TOKENS)
    def open(self, path, user, token):
        conn = Conn()
        held = token is not None and token in self.reservations
        before = self.snapshot()
        if not held and len(self.open_conns) + len(self.reservations) >= CAPACITY:
            with pytest.raises(AtCapacity):
                self.state.open(conn, path, user, CAPACITY, token)
            return multiple()
        out = self.state.open(conn, path, user, CAPACITY, token)
        if held:
            self.reservations.discard(token)
        self.open_conns[conn] = [path, user, set()]
        self.check_announcements(out, before)
        return conn

    @rule(conn=conns, token=st.none() | TOKENS)
    def open_again(self, conn, token):
        if conn not in self.open_conns:
            return
        path, user, _ = self.open_conns[conn]
        assert self.state.open(conn, path, user, CAPACITY, token) == []
        self.reservations.discard(token)

    @rule(conn=conns)
    def close(self, conn):
        before = self.snapshot()
        if conn not in self.open_conns:
            assert self.state.close(conn, "/a", 1, ["r"]) == []
            return
        path, user, rooms = self.open_conns.pop(conn)
        out = self.state.close(conn, path, user, sorted(rooms))
        self.check_announcements(out, before)

    @rule(conn=conns, room=ROOMS)
    def join(self, conn, room):
        before = self.snapshot()
        if conn not in self.open_conns:
            assert self.state.join(conn, "/a", room, 1) is None
            return
        path, user, rooms = self.open_conns[conn]
        out = self.state.join(conn, path, room, user)
        rooms.add(room)
        self.check_announcements(out, before)

    @rule(conn=conns, room=ROOMS)
    def leave(self, conn, room):
        before = self.snapshot()
        if conn not in self.open_conns:
            assert self.state.leave(conn, room, 1) == []
            return
        _, user, rooms = self.open_conns[conn]
        out = self.state.leave(conn, room, user)
        rooms.discard(room)
        self.check_announcements(out, before)

    # -- remote nodes ----------------------------------------------------------------------

    @rule(node=NODES, users=st.sets(REMOTE_USERS | st.none()), pairs=st.sets(PAIRS))
    def node_synced(self, node, users, pairs):
        before = self.snapshot()
        out = self.state.node_synced(node, users, pairs)
        self.nodes[node] = ({u for u in users if u is not None}, set(pairs))
        self.check_announcements(out, before)

    @rule(node=NODES, users=st.sets(REMOTE_USERS), pairs=st.sets(PAIRS))
    def node_added(self, node, users, pairs):
        before = self.snapshot()
        out = self.state.node_added(node, users, pairs)
        if node in self.nodes:
            self.nodes[node][0].update(users)
            self.nodes[node][1].update(pairs)
        self.check_announcements(out, before)

    @rule(node=NODES, users=st.sets(REMOTE_USERS), pairs=st.sets(PAIRS))
    def node_removed(self, node, users, pairs):
        before = self.snapshot()
        out = self.state.node_removed(node, users, pairs)
        if node in self.nodes:
            self.nodes[node][0].difference_update(users)
            self.nodes[node][1].difference_update(pairs)
        self.check_announcements(out, before)

    @rule(node=NODES)
    def node_down(self, node):
        before = self.snapshot()
        out = self.state.node_down(node)
        self.nodes.pop(node, None)
        self.check_announcements(out, before)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def connections_and_counts_match_membership(self):
        state = self.state
        by_path: dict = {}
        for conn, (path, _, _) in self.open_conns.items():
            by_path.setdefault(path, set()).add(conn)
        assert {path: set(members) for path, members in state.by_path.items()} == by_path
        assert state.count == len(self.open_conns) == sum(len(m) for m in state.by_path.values())
        assert Counter(state.connections()) == Counter(self.open_conns.keys())

    @invariant()
    def rooms_hold_only_open_connections(self):
        rooms: dict = {}
        for conn, (_, _, joined) in self.open_conns.items():
            for room in joined:
                rooms.setdefault(room, set()).add(conn)
        assert {room: set(members) for room, members in self.state.rooms.items()} == rooms
        for room, members in self.state.rooms.items():
            assert all(self.state.is_open(conn, self.open_conns[conn][0]) for conn in members)
            assert set(self.state.room_members(room)) == set(members)

    @invariant()
    def presence_counts_equal_connections_per_user(self):
        users = Counter(user for _, user, _ in self.open_conns.values() if user is not None)
        assert self.state.local_users == dict(users)
        per_room: dict = {}
        for _, user, joined in self.open_conns.values():
            for room in joined if user is not None else ():
                per_room.setdefault(room, Counter())[user] += 1
        assert self.state.local_room_users == {room: dict(counts) for room, counts in per_room.items()}
        assert set(self.state.held_users()) == self.held()
        assert set(self.state.held_room_users()) == self.held_pairs()

    @invariant()
    def remote_counts_equal_live_nodes_holding(self):
        users = Counter(user for held, _ in self.nodes.values() for user in held)
        pairs = Counter(pair for _, held in self.nodes.values() for pair in held)
        assert self.state.remote_users == dict(users)
        per_room: dict = {}
        for (room, user), n in pairs.items():
            per_room.setdefault(room, {})[user] = n
        assert self.state.remote_room_users == per_room
        assert set(self.state.live_nodes()) == set(self.nodes)

    @invariant()
    def online_iff_held_here_or_by_a_live_node(self):
        online = self.online()
        listed = self.state.online_users()
        assert len(listed) == len(set(listed)) and set(listed) == online
        for user in (1, 2, 3, 4):
            assert self.state.is_online(user) is (user in online)
        for room in ("r", "s", "t"):
            listed = self.state.room_users(room)
            assert len(listed) == len(set(listed))
            assert set(listed) == {user for r, user in self.in_rooms() if r == room}

    @invariant()
    def reservations_and_open_connections_fit_the_capacity(self):
        assert set(self.state.reservations) == self.reservations
        assert self.state.taken() == len(self.open_conns) + len(self.reservations) <= CAPACITY
        assert self.state.is_empty() is (not self.open_conns and not self.reservations)


HubStateMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None, database=None)
test_hub_state = HubStateMachine.TestCase
