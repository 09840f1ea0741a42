"""The hub's shared state as pure transitions: who is connected, in which rooms, and who is online.

:class:`HubState` holds the connections of one process by path and by room, how
many connections each user has open here (and in each room), and what the other
live nodes of a cluster hold. Each transition applies one change whole and
returns the announcements it calls for, in order:

- for this node's clients: :class:`UserOnline`, :class:`UserOffline`,
  :class:`RoomJoined`, :class:`RoomLeft`, each made once per change of the
  cluster-wide view (a user is online while at least one connection on any
  live node is open; in room R while at least one connection is in R);
- for the other nodes: :class:`LocalUserAdded`, :class:`LocalUserRemoved`,
  :class:`LocalRoomUserAdded`, :class:`LocalRoomUserRemoved`, made when this
  node's own count of a user (or of a user in a room) leaves or reaches zero.

No I/O and no gevent here: the caller applies a transition, then sends what it
returned, so nothing is ever announced from a half-changed state. Connections
are opaque hashable keys; user ids are hashable; guests (``None``) are never
counted. The state is the one owner of room membership: a connection's rooms
are read from it (:meth:`HubState.rooms_of`), never kept on the connection.

Remote nodes: a node becomes live with :meth:`HubState.node_synced` (its whole
holding), changes with :meth:`HubState.node_added` / :meth:`HubState.node_removed`,
and ends with :meth:`HubState.node_down`. Events about a node that is not live
are ignored until it syncs again, so a late event cannot bring a dead node back.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

UserId = Hashable
RoomUser = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class UserOnline:
    """Tell this node's clients: ``user_id`` is online (first connection anywhere)."""

    user_id: Any


@dataclass(frozen=True, slots=True)
class UserOffline:
    """Tell this node's clients: ``user_id`` is offline (no connection left anywhere)."""

    user_id: Any


@dataclass(frozen=True, slots=True)
class RoomJoined:
    """Tell this node's members of ``room``: ``user_id`` is in it (first connection anywhere)."""

    room: str
    user_id: Any


@dataclass(frozen=True, slots=True)
class RoomLeft:
    """Tell this node's members of ``room``: ``user_id`` left it (last connection anywhere)."""

    room: str
    user_id: Any


@dataclass(frozen=True, slots=True)
class LocalUserAdded:
    """Tell the other nodes: this node now holds ``user_id``."""

    user_id: Any


@dataclass(frozen=True, slots=True)
class LocalUserRemoved:
    """Tell the other nodes: this node no longer holds ``user_id``."""

    user_id: Any


@dataclass(frozen=True, slots=True)
class LocalRoomUserAdded:
    """Tell the other nodes: this node now holds ``user_id`` in ``room``."""

    room: str
    user_id: Any


@dataclass(frozen=True, slots=True)
class LocalRoomUserRemoved:
    """Tell the other nodes: this node no longer holds ``user_id`` in ``room``."""

    room: str
    user_id: Any


#: What a transition returns: announcements, in the order they must be made.
Announcements = list

#: The announcements meant for the other nodes of a cluster.
LOCAL_CHANGES = (LocalUserAdded, LocalUserRemoved, LocalRoomUserAdded, LocalRoomUserRemoved)


class AtCapacity(Exception):
    """A connection was opened with every slot taken (``max_connections``)."""


def _count_up(counts: dict, key: Any) -> bool:
    """Add one to ``counts[key]``; True if it was zero."""
    n = counts.get(key, 0)
    counts[key] = n + 1
    return n == 0


def _count_down(counts: dict, key: Any) -> bool:
    """Take one from ``counts[key]`` (the key goes at zero); True if it reached zero."""
    n = counts.get(key, 0)
    if n > 1:
        counts[key] = n - 1
        return False
    counts.pop(key, None)
    return n == 1


class _Holding:
    """What one remote node holds: its users, and its (room, user) pairs."""

    __slots__ = ("users", "room_users")

    def __init__(self) -> None:
        self.users: set = set()
        self.room_users: set = set()


class HubState:
    """Connections, rooms and presence of one node, and what the live remote nodes hold.

    Read the public attributes directly (the hub's broadcast loop does);
    change them only through the transitions.
    """

    def __init__(self) -> None:
        """An empty state: no connection, no room, no remote node."""
        #: path -> its open connections (a dict used as an ordered set).
        self.by_path: dict[str, dict[Any, None]] = {}
        #: room -> the connections of this node that joined it.
        self.rooms: dict[str, dict[Any, None]] = {}
        #: None, or the paths (``("path", path)``) and rooms (``("room", room)``) that got their
        #: first connection here or lost their last since a watcher last took the set.
        self.came_or_went: set[tuple[str, str]] | None = None
        #: connection -> the rooms it is in, in the order it joined them (a dict used as an
        #: ordered set). Only a connection in at least one room has an entry.
        self.joined: dict[Any, dict[str, None]] = {}
        #: closed connection -> the rooms it was in when it closed, kept as long as the
        #: connection object lives (its on_disconnect handler still reads them).
        self._departed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        #: user -> how many connections of this node they have open.
        self.local_users: dict[Any, int] = {}
        #: room -> user -> how many of this node's connections of the user are in it.
        self.local_room_users: dict[str, dict[Any, int]] = {}
        #: user -> how many live remote nodes hold them.
        self.remote_users: dict[Any, int] = {}
        #: room -> user -> how many live remote nodes hold the user in it.
        self.remote_room_users: dict[str, dict[Any, int]] = {}
        #: live remote node -> what it holds.
        self.nodes: dict[str, _Holding] = {}
        #: How many connections are open.
        self.count = 0
        #: Slots taken by handshakes in progress, by token.
        self.reservations: dict[Any, None] = {}

    # -- capacity ------------------------------------------------------------------

    def _noted(self, kind: str, key: str) -> None:
        if self.came_or_went is not None:
            self.came_or_went.add((kind, key))

    def taken(self) -> int:
        """Slots in use: open connections plus handshakes holding a reservation."""
        return self.count + len(self.reservations)

    def reserve(self, token: Hashable, capacity: int) -> bool:
        """Hold a slot for a handshake under ``token``; False if all ``capacity`` slots are taken.

        Reserving again under a token that holds a slot keeps that one slot.
        """
        if token in self.reservations:
            return True
        if self.taken() >= capacity:
            return False
        self.reservations[token] = None
        return True

    def release(self, token: Hashable) -> None:
        """Give back the slot held under ``token`` (nothing if it was used or never held)."""
        self.reservations.pop(token, None)

    # -- this node's connections -----------------------------------------------------

    def is_open(self, conn: Any, path: str) -> bool:
        """True if ``conn`` is open on ``path``."""
        members = self.by_path.get(path)
        return members is not None and conn in members

    def open(
        self, conn: Any, path: str, user_id: Any, capacity: int, reservation: Hashable | None = None
    ) -> Announcements:
        """Open ``conn`` on ``path``, in the slot held under ``reservation`` or a free one.

        Raises :class:`AtCapacity` when there is neither. Opening an open
        connection changes nothing.
        """
        if self.is_open(conn, path):
            self.release(reservation)
            return []
        if reservation is not None and reservation in self.reservations:
            del self.reservations[reservation]
        elif self.taken() >= capacity:
            raise AtCapacity(f"{self.taken()} of {capacity} connection slots taken")
        members = self.by_path.get(path)
        if members is None:
            members = self.by_path[path] = {}
            self._noted("path", path)
        members[conn] = None
        self.count += 1
        if self._departed and self._rooms_at_close(conn) is not None:
            del self._departed[conn]  # opened again: the rooms it left at its last close are past
        out: Announcements = []
        if user_id is not None and _count_up(self.local_users, user_id):
            out.append(LocalUserAdded(user_id))
            if user_id not in self.remote_users:
                out.append(UserOnline(user_id))
        return out

    def close(self, conn: Any, path: str, user_id: Any) -> Announcements:
        """Close ``conn``: it leaves every room it joined (in the order it joined them), then ``path``.

        Rooms are announced before the user, as a client would see them go.
        :meth:`rooms_of` still answers the rooms it was in, for as long as the
        connection object lives. Closing a connection that is not open changes nothing.
        """
        members = self.by_path.get(path)
        if members is None or conn not in members:
            return []
        del members[conn]
        if not members:
            del self.by_path[path]
            self._noted("path", path)
        self.count -= 1
        out: Announcements = []
        rooms = self.joined.pop(conn, None)
        if rooms is not None:
            for room in rooms:
                self._leave(conn, room, user_id, out)
            try:
                self._departed[conn] = rooms
            except TypeError:  # a key that cannot be weakly referenced: its rooms are not kept
                pass
        if user_id is not None and _count_down(self.local_users, user_id):
            out.append(LocalUserRemoved(user_id))
            if user_id not in self.remote_users:
                out.append(UserOffline(user_id))
        return out

    def join(self, conn: Any, path: str, room: str, user_id: Any) -> Announcements | None:
        """Put open ``conn`` in ``room``; None if ``conn`` is not open on ``path``.

        Joining a room twice changes nothing.
        """
        if not self.is_open(conn, path):
            return None
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = {}
            self._noted("room", room)
        elif conn in members:
            return []
        members[conn] = None
        rooms = self.joined.get(conn)
        if rooms is None:
            rooms = self.joined[conn] = {}
        rooms[room] = None
        out: Announcements = []
        if user_id is not None and _count_up(self.local_room_users.setdefault(room, {}), user_id):
            out.append(LocalRoomUserAdded(room, user_id))
            if user_id not in self.remote_room_users.get(room, ()):
                out.append(RoomJoined(room, user_id))
        return out

    def at_room_cap(self, conn: Any, room: str, cap: int) -> bool:
        """True when ``conn`` is in ``cap`` rooms already, ``room`` not among them (``cap`` 0: no limit)."""
        rooms = self.joined.get(conn)
        return cap > 0 and rooms is not None and len(rooms) >= cap and room not in rooms

    def leave(self, conn: Any, room: str, user_id: Any) -> Announcements:
        """Take ``conn`` out of ``room`` (nothing if it is not in it).

        A closed connection has left its rooms already: leaving one only drops
        it from the rooms :meth:`rooms_of` still answers for it.
        """
        rooms = self.joined.get(conn)
        if rooms is None:
            rooms = self._rooms_at_close(conn)
            if rooms is not None:
                rooms.pop(room, None)
            return []
        if room not in rooms:
            return []
        del rooms[room]
        if not rooms:
            del self.joined[conn]
        out: Announcements = []
        self._leave(conn, room, user_id, out)
        return out

    def _leave(self, conn: Any, room: str, user_id: Any, out: Announcements) -> None:
        members = self.rooms.get(room)
        if members is None or conn not in members:
            return
        del members[conn]
        if not members:
            del self.rooms[room]
            self._noted("room", room)
        counts = self.local_room_users.get(room)
        if user_id is None or counts is None or not _count_down(counts, user_id):
            return
        if not counts:
            del self.local_room_users[room]
        out.append(LocalRoomUserRemoved(room, user_id))
        if user_id not in self.remote_room_users.get(room, ()):
            out.append(RoomLeft(room, user_id))

    # -- remote nodes ------------------------------------------------------------------

    def node_synced(self, node: str, users: Iterable[Any], room_users: Iterable[RoomUser]) -> Announcements:
        """``node`` is live and holds exactly ``users`` and the (room, user) pairs ``room_users``."""
        holding = self.nodes.get(node)
        if holding is None:
            holding = self.nodes[node] = _Holding()
        new_users, new_pairs = set(users), set(room_users)
        out: Announcements = []
        self._remote_rooms_removed(holding, [p for p in holding.room_users if p not in new_pairs], out)
        self._remote_users_removed(holding, [u for u in holding.users if u not in new_users], out)
        self._remote_users_added(holding, new_users, out)
        self._remote_rooms_added(holding, new_pairs, out)
        return out

    def node_added(self, node: str, users: Iterable[Any] = (), room_users: Iterable[RoomUser] = ()) -> Announcements:
        """Live ``node`` now also holds ``users`` and ``room_users``; ignored if it is not live."""
        holding = self.nodes.get(node)
        out: Announcements = []
        if holding is not None:
            self._remote_users_added(holding, users, out)
            self._remote_rooms_added(holding, room_users, out)
        return out

    def node_removed(self, node: str, users: Iterable[Any] = (), room_users: Iterable[RoomUser] = ()) -> Announcements:
        """Live ``node`` no longer holds ``users`` nor ``room_users``; ignored if it is not live."""
        holding = self.nodes.get(node)
        out: Announcements = []
        if holding is not None:
            self._remote_rooms_removed(holding, room_users, out)
            self._remote_users_removed(holding, users, out)
        return out

    def node_down(self, node: str) -> Announcements:
        """``node`` is gone: everything it held goes with it, and its events are ignored from now on."""
        holding = self.nodes.pop(node, None)
        out: Announcements = []
        if holding is not None:
            self._remote_rooms_removed(holding, list(holding.room_users), out)
            self._remote_users_removed(holding, list(holding.users), out)
        return out

    def _remote_users_added(self, holding: _Holding, users: Iterable[Any], out: Announcements) -> None:
        for user in users:
            if user is None or user in holding.users:
                continue
            holding.users.add(user)
            if _count_up(self.remote_users, user) and user not in self.local_users:
                out.append(UserOnline(user))

    def _remote_users_removed(self, holding: _Holding, users: Iterable[Any], out: Announcements) -> None:
        for user in users:
            if user not in holding.users:
                continue
            holding.users.discard(user)
            if _count_down(self.remote_users, user) and user not in self.local_users:
                out.append(UserOffline(user))

    def _remote_rooms_added(self, holding: _Holding, pairs: Iterable[RoomUser], out: Announcements) -> None:
        for pair in pairs:
            room, user = pair
            if user is None or pair in holding.room_users:
                continue
            holding.room_users.add(pair)
            if _count_up(self.remote_room_users.setdefault(room, {}), user) and user not in self.local_room_users.get(
                room, ()
            ):
                out.append(RoomJoined(room, user))

    def _remote_rooms_removed(self, holding: _Holding, pairs: Iterable[RoomUser], out: Announcements) -> None:
        for pair in pairs:
            if pair not in holding.room_users:
                continue
            holding.room_users.discard(pair)
            room, user = pair
            counts = self.remote_room_users.get(room, {})
            if not _count_down(counts, user):
                continue
            if not counts:
                self.remote_room_users.pop(room, None)
            if user not in self.local_room_users.get(room, ()):
                out.append(RoomLeft(room, user))

    # -- the views ------------------------------------------------------------------------

    def connections(self, path: str | None = None) -> list:
        """The open connections, on ``path`` or on every path."""
        if path is not None:
            return list(self.by_path.get(path, ()))
        return [conn for members in self.by_path.values() for conn in members]

    def online_users(self) -> list:
        """Users with a connection on any live node: this node's first, then the others'."""
        local = self.local_users
        return list(local) + [user for user in self.remote_users if user not in local]

    def is_online(self, user_id: Any) -> bool:
        """True if ``user_id`` has a connection on any live node."""
        return user_id in self.local_users or user_id in self.remote_users

    def room_users(self, room: str) -> list:
        """Users with a connection in ``room`` on any live node: this node's first."""
        local = self.local_room_users.get(room, {})
        return list(local) + [user for user in self.remote_room_users.get(room, ()) if user not in local]

    def room_members(self, room: str) -> list:
        """This node's connections in ``room``."""
        return list(self.rooms.get(room, ()))

    def rooms_of(self, conn: Any) -> frozenset[str]:
        """The rooms ``conn`` is in; for a closed connection, those it was in when it closed."""
        rooms = self.joined.get(conn)
        if rooms is None:
            rooms = self._rooms_at_close(conn)
            if rooms is None:
                return frozenset()
        return frozenset(rooms)

    def _rooms_at_close(self, conn: Any) -> dict[str, None] | None:
        try:
            return self._departed.get(conn)
        except TypeError:  # a key that cannot be weakly referenced keeps no rooms after closing
            return None

    def held_users(self) -> list:
        """The users this node holds (what it tells the other nodes it has)."""
        return list(self.local_users)

    def held_room_users(self) -> list[RoomUser]:
        """The (room, user) pairs this node holds."""
        return [(room, user) for room, users in self.local_room_users.items() for user in users]

    def live_nodes(self) -> list[str]:
        """The remote nodes this state takes as live."""
        return list(self.nodes)

    # -- what an operator reads (the dashboard): copies and counts, never the tables themselves --

    def node_holding(self, node: str) -> tuple[frozenset, frozenset] | None:
        """What live remote ``node`` holds: ``(users, (room, user) pairs)``; None if it is not live."""
        holding = self.nodes.get(node)
        if holding is None:
            return None
        return frozenset(holding.users), frozenset(holding.room_users)

    def online_count(self) -> int:
        """How many users have a connection on any live node."""
        return len(self.local_users) + sum(1 for user in self.remote_users if user not in self.local_users)

    def known_rooms(self) -> list[str]:
        """Rooms with a connection of this node or a user on a live remote node in them."""
        return list(self.rooms) + [room for room in self.remote_room_users if room not in self.rooms]

    def is_empty(self) -> bool:
        """True when no connection, room, reservation or local count is left."""
        return not (
            self.by_path
            or self.rooms
            or self.joined
            or self.local_users
            or self.local_room_users
            or self.count
            or self.reservations
        )
