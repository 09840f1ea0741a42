"""The hub's state core, transition by transition: what each change does and what it announces.

Pure logic, no sockets: connections are plain objects, users are ints, nodes are
strings. One test per state change, named after it.
"""

from __future__ import annotations

import pytest

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

BIG = 1_000


class Conn:
    """A stand-in connection: only its identity matters to the state."""


@pytest.fixture
def state() -> HubState:
    return HubState()


def opened(state: HubState, user=None, path="/chat") -> Conn:
    conn = Conn()
    state.open(conn, path, user, BIG)
    return conn


# -- opening and closing -------------------------------------------------------------


def test_open_guest_registers_on_path_and_announces_nothing(state):
    conn = Conn()
    assert state.open(conn, "/chat", None, BIG) == []
    assert state.connections("/chat") == [conn]
    assert state.count == 1
    assert state.online_users() == []


def test_open_first_connection_of_user_announces_online_and_local_add(state):
    assert state.open(Conn(), "/chat", 7, BIG) == [LocalUserAdded(7), UserOnline(7)]
    assert state.is_online(7)


def test_open_second_connection_of_user_announces_nothing(state):
    opened(state, 7)
    assert state.open(Conn(), "/other", 7, BIG) == []
    assert state.local_users == {7: 2}


def test_open_user_held_by_remote_node_announces_only_local_add(state):
    state.node_synced("B", [7], [])
    assert state.open(Conn(), "/chat", 7, BIG) == [LocalUserAdded(7)]


def test_open_same_connection_twice_changes_nothing(state):
    conn = opened(state, 7)
    assert state.open(conn, "/chat", 7, BIG) == []
    assert state.count == 1 and state.local_users == {7: 1}


def test_open_at_capacity_raises_and_changes_nothing(state):
    opened(state)
    with pytest.raises(AtCapacity):
        state.open(Conn(), "/chat", 7, 1)
    assert state.count == 1 and state.local_users == {}


def test_close_last_connection_of_user_announces_local_remove_and_offline(state):
    conn = opened(state, 7)
    assert state.close(conn, "/chat", 7) == [LocalUserRemoved(7), UserOffline(7)]
    assert state.is_empty()


def test_close_one_of_two_tabs_announces_nothing(state):
    tab = opened(state, 7)
    opened(state, 7, "/other")
    assert state.close(tab, "/chat", 7) == []
    assert state.is_online(7)


def test_close_last_local_tab_of_user_held_remotely_announces_only_local_remove(state):
    state.node_synced("B", [7], [])
    conn = opened(state, 7)
    assert state.close(conn, "/chat", 7) == [LocalUserRemoved(7)]
    assert state.is_online(7)


def test_close_unknown_connection_changes_nothing(state):
    opened(state, 7)
    assert state.close(Conn(), "/chat", 7) == []
    assert state.count == 1


def test_close_twice_counts_once(state):
    tab = opened(state, 7)
    opened(state, 7)
    state.close(tab, "/chat", 7)
    assert state.close(tab, "/chat", 7) == []
    assert state.local_users == {7: 1} and state.count == 1


def test_close_leaves_rooms_first_then_goes_offline(state):
    conn = opened(state, 7)
    state.join(conn, "/chat", "r1", 7)
    state.join(conn, "/chat", "r2", 7)
    assert state.close(conn, "/chat", 7, ["r1", "r2"]) == [
        LocalRoomUserRemoved("r1", 7),
        RoomLeft("r1", 7),
        LocalRoomUserRemoved("r2", 7),
        RoomLeft("r2", 7),
        LocalUserRemoved(7),
        UserOffline(7),
    ]
    assert state.is_empty()


def test_close_empties_the_path_entry(state):
    conn = opened(state)
    state.close(conn, "/chat", None)
    assert state.by_path == {}


# -- capacity: reservations -----------------------------------------------------------------


def test_reserve_takes_a_slot(state):
    assert state.reserve("h1", 2)
    assert state.taken() == 1


def test_reserve_refused_when_every_slot_is_taken(state):
    assert state.reserve("h1", 2)
    assert state.reserve("h2", 2)
    assert not state.reserve("h3", 2)
    opened_conn = Conn()
    with pytest.raises(AtCapacity):
        state.open(opened_conn, "/chat", None, 2)


def test_reserve_again_with_the_same_token_keeps_one_slot(state):
    state.reserve("h1", 1)
    assert state.reserve("h1", 1)
    assert state.taken() == 1


def test_open_with_reservation_uses_its_slot(state):
    state.reserve("h1", 1)
    state.open(Conn(), "/chat", None, 1, reservation="h1")
    assert state.reservations == {} and state.count == 1 and state.taken() == 1


def test_open_with_unknown_reservation_needs_a_free_slot(state):
    opened(state)
    with pytest.raises(AtCapacity):
        state.open(Conn(), "/chat", None, 1, reservation="never-held")


def test_release_gives_the_slot_back(state):
    state.reserve("h1", 1)
    state.release("h1")
    assert state.taken() == 0 and state.reserve("h2", 1)


def test_release_after_open_changes_nothing(state):
    state.reserve("h1", 2)
    state.open(Conn(), "/chat", None, 2, reservation="h1")
    state.release("h1")
    assert state.taken() == 1


def test_close_frees_a_slot(state):
    conn = opened(state)
    state.close(conn, "/chat", None)
    assert state.reserve("h1", 1)


def test_many_handshakes_never_exceed_capacity(state):
    admitted = [token for token in range(50) if state.reserve(token, 5)]
    for token in admitted:
        state.open(Conn(), "/chat", None, 5, reservation=token)
    assert len(admitted) == 5 and state.count == 5


# -- rooms ---------------------------------------------------------------------------------


def test_join_first_connection_of_user_announces_local_add_and_joined(state):
    conn = opened(state, 7)
    assert state.join(conn, "/chat", "r", 7) == [LocalRoomUserAdded("r", 7), RoomJoined("r", 7)]
    assert state.room_members("r") == [conn]
    assert state.room_users("r") == [7]


def test_join_second_tab_of_user_announces_nothing(state):
    state.join(opened(state, 7), "/chat", "r", 7)
    tab = opened(state, 7)
    assert state.join(tab, "/chat", "r", 7) == []
    assert state.local_room_users == {"r": {7: 2}}


def test_join_twice_changes_nothing(state):
    conn = opened(state, 7)
    state.join(conn, "/chat", "r", 7)
    assert state.join(conn, "/chat", "r", 7) == []
    assert state.local_room_users == {"r": {7: 1}}


def test_join_guest_is_a_member_but_never_listed(state):
    conn = opened(state)
    assert state.join(conn, "/chat", "r", None) == []
    assert state.room_members("r") == [conn]
    assert state.room_users("r") == []


def test_join_connection_that_is_not_open_is_refused(state):
    conn = opened(state, 7)
    state.close(conn, "/chat", 7)
    assert state.join(conn, "/chat", "r", 7) is None
    assert state.rooms == {}


def test_join_user_in_room_on_remote_node_announces_only_local_add(state):
    state.node_synced("B", [7], [("r", 7)])
    assert state.join(opened(state, 7), "/chat", "r", 7) == [LocalRoomUserAdded("r", 7)]


def test_leave_last_connection_of_user_announces_local_remove_and_left(state):
    conn = opened(state, 7)
    state.join(conn, "/chat", "r", 7)
    assert state.leave(conn, "r", 7) == [LocalRoomUserRemoved("r", 7), RoomLeft("r", 7)]
    assert state.rooms == {} and state.local_room_users == {}


def test_leave_one_of_two_tabs_announces_nothing(state):
    a, b = opened(state, 7), opened(state, 7)
    state.join(a, "/chat", "r", 7)
    state.join(b, "/chat", "r", 7)
    assert state.leave(a, "r", 7) == []
    assert state.room_users("r") == [7] and state.room_members("r") == [b]


def test_leave_room_not_joined_changes_nothing(state):
    conn = opened(state, 7)
    assert state.leave(conn, "r", 7) == []


def test_leave_while_user_in_room_on_remote_node_announces_only_local_remove(state):
    state.node_synced("B", [7], [("r", 7)])
    conn = opened(state, 7)
    state.join(conn, "/chat", "r", 7)
    assert state.leave(conn, "r", 7) == [LocalRoomUserRemoved("r", 7)]
    assert state.room_users("r") == [7]


# -- remote nodes --------------------------------------------------------------------------


def test_node_synced_makes_the_node_live_and_announces_its_users_and_rooms(state):
    assert state.node_synced("B", [1, 2], [("r", 1)]) == [UserOnline(1), UserOnline(2), RoomJoined("r", 1)]
    assert state.live_nodes() == ["B"]
    assert sorted(state.online_users()) == [1, 2] and state.room_users("r") == [1]


def test_node_synced_again_announces_only_the_difference(state):
    state.node_synced("B", [1, 2], [("r", 1)])
    assert state.node_synced("B", [2, 3], [("r", 3)]) == [
        RoomLeft("r", 1),
        UserOffline(1),
        UserOnline(3),
        RoomJoined("r", 3),
    ]


def test_node_synced_with_user_held_locally_announces_nothing(state):
    conn = opened(state, 1)
    state.join(conn, "/chat", "r", 1)
    assert state.node_synced("B", [1], [("r", 1)]) == []


def test_node_added_user_announces_online(state):
    state.node_synced("B", [], [])
    assert state.node_added("B", users=[5]) == [UserOnline(5)]


def test_node_added_user_already_held_by_that_node_changes_nothing(state):
    state.node_synced("B", [5], [])
    assert state.node_added("B", users=[5]) == []
    assert state.remote_users == {5: 1}


def test_node_added_user_held_by_another_node_announces_nothing(state):
    state.node_synced("B", [5], [])
    state.node_synced("C", [], [])
    assert state.node_added("C", users=[5]) == []
    assert state.remote_users == {5: 2}


def test_node_added_room_user_announces_joined(state):
    state.node_synced("B", [5], [])
    assert state.node_added("B", room_users=[("r", 5)]) == [RoomJoined("r", 5)]


def test_node_added_for_a_node_that_is_not_live_is_ignored(state):
    assert state.node_added("ghost", users=[5], room_users=[("r", 5)]) == []
    assert state.online_users() == [] and state.room_users("r") == [] and state.live_nodes() == []


def test_node_added_after_node_down_is_ignored(state):
    state.node_synced("B", [5], [])
    state.node_down("B")
    assert state.node_added("B", users=[6]) == []
    assert not state.is_online(6)


def test_node_synced_after_node_down_makes_it_live_again(state):
    state.node_synced("B", [5], [])
    state.node_down("B")
    assert state.node_synced("B", [6], []) == [UserOnline(6)]


def test_node_removed_last_holder_announces_offline(state):
    state.node_synced("B", [5], [])
    assert state.node_removed("B", users=[5]) == [UserOffline(5)]
    assert state.remote_users == {}


def test_node_removed_user_still_on_another_node_announces_nothing(state):
    state.node_synced("B", [5], [])
    state.node_synced("C", [5], [])
    assert state.node_removed("B", users=[5]) == []
    assert state.is_online(5)


def test_node_removed_user_still_held_locally_announces_nothing(state):
    opened(state, 5)
    state.node_synced("B", [5], [])
    assert state.node_removed("B", users=[5]) == []


def test_node_removed_user_it_does_not_hold_changes_nothing(state):
    state.node_synced("B", [], [])
    state.node_synced("C", [5], [])
    assert state.node_removed("B", users=[5]) == []
    assert state.remote_users == {5: 1}


def test_node_removed_room_user_announces_left(state):
    state.node_synced("B", [5], [("r", 5)])
    assert state.node_removed("B", room_users=[("r", 5)]) == [RoomLeft("r", 5)]
    assert state.remote_room_users == {}


def test_node_removed_room_user_still_in_room_locally_announces_nothing(state):
    conn = opened(state, 5)
    state.join(conn, "/chat", "r", 5)
    state.node_synced("B", [5], [("r", 5)])
    assert state.node_removed("B", room_users=[("r", 5)]) == []
    assert state.room_users("r") == [5]


def test_node_removed_for_a_node_that_is_not_live_is_ignored(state):
    state.node_synced("B", [5], [])
    assert state.node_removed("ghost", users=[5]) == []
    assert state.is_online(5)


def test_node_down_announces_its_rooms_left_then_its_users_offline(state):
    state.node_synced("B", [5], [("r", 5)])
    assert state.node_down("B") == [RoomLeft("r", 5), UserOffline(5)]
    assert state.live_nodes() == [] and state.remote_users == {} and state.remote_room_users == {}


def test_node_down_keeps_users_held_elsewhere(state):
    state.node_synced("B", [5, 6], [("r", 5)])
    state.node_synced("C", [5], [("r", 5)])
    assert state.node_down("B") == [UserOffline(6)]
    assert state.room_users("r") == [5]


def test_node_down_of_unknown_node_changes_nothing(state):
    assert state.node_down("ghost") == []


def test_node_events_never_announce_guests(state):
    state.node_synced("B", [None], [("r", None)])
    assert state.online_users() == [] and state.room_users("r") == []


# -- the views -----------------------------------------------------------------------------


def test_online_users_lists_local_users_first_then_remote(state):
    state.node_synced("B", [2, 1], [])
    opened(state, 1)
    opened(state, 3)
    assert state.online_users() == [1, 3, 2]


def test_room_users_lists_everyone_in_the_cluster(state):
    state.join(opened(state, 1), "/chat", "r", 1)
    state.node_synced("B", [2], [("r", 2), ("other", 2)])
    state.node_synced("C", [1], [("r", 1)])
    assert state.room_users("r") == [1, 2]


def test_held_users_and_room_users_are_what_this_node_holds(state):
    conn = opened(state, 1)
    state.join(conn, "/chat", "r", 1)
    opened(state)
    state.node_synced("B", [2], [("r", 2)])
    assert state.held_users() == [1]
    assert state.held_room_users() == [("r", 1)]


def test_connections_on_every_path(state):
    a, b = opened(state, path="/a"), opened(state, path="/b")
    assert state.connections() == [a, b]
    assert state.connections("/a") == [a] and state.connections("/none") == []


# -- the operator's views ------------------------------------------------------------------


def test_node_holding_is_a_copy_of_what_a_live_node_holds(state):
    state.node_synced("B", [1, 2], [("r", 1)])
    users, pairs = state.node_holding("B")
    assert users == {1, 2} and pairs == {("r", 1)}
    state.node_removed("B", users=[2])
    assert users == {1, 2}  # a copy: the view does not change under the reader
    assert state.node_holding("B")[0] == {1}


def test_node_holding_of_a_node_that_is_not_live_is_none(state):
    assert state.node_holding("B") is None
    state.node_synced("B", [1], [])
    state.node_down("B")
    assert state.node_holding("B") is None


def test_online_count_counts_a_user_held_here_and_elsewhere_once(state):
    opened(state, user=1)
    opened(state, user=1)
    state.node_synced("B", [1, 2], [])
    assert state.online_count() == 2 == len(state.online_users())
    state.node_down("B")
    assert state.online_count() == 1


def test_known_rooms_are_this_nodes_then_the_others(state):
    conn = opened(state, user=1)
    state.join(conn, "/chat", "here", 1)
    state.node_synced("B", [2], [("there", 2), ("here", 2)])
    assert state.known_rooms() == ["here", "there"]
    state.leave(conn, "here", 1)
    assert sorted(state.known_rooms()) == ["here", "there"]  # B still has a user in it
    state.node_down("B")
    assert state.known_rooms() == []
