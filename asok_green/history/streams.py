"""Streams that keep history: offsets, epochs, and the replay a reconnecting client asks for.

A path (``/chat/general``) or a room (``room:general``) keeps history when the
app says so (``@ws.on("/chat/[room]", history=200)``, ``ws.keep_history(...)``).
Each broadcast to it is appended to the history store (asok_green.history.store),
which gives it the next offset of the stream's epoch; the hub then hands it to
every member, plain clients as today and ``asok-green.v1`` clients in an
envelope that names the stream, the epoch and the offset (encoded once).

A v1 client that connects (or joins a room) is first told where the stream
stands (``position``), or, when it brings its last position, given every
message it missed (``resumed``), or told that this cannot be done whole
(``continuity_lost``). While that answer is read (it may yield), the client is
a member already and its live messages of the stream are held for it; after
the answer those it has not been given are sent, in order. So no message is
lost or sent twice between the replay and the live stream.

Offsets come from the store, which other processes may write too (a SQLite
file shared during a restart, Redis Streams): when a message arrives with an
offset past the next one expected, the messages in between are read from the
store and delivered first.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable
from time import time
from typing import TYPE_CHECKING, Any

from ..core.logs import log_limited
from ..protocol import envelopes
from ..protocol.frames import CLOSE_INTERNAL_ERROR, CLOSE_TRY_AGAIN
from ..protocol.outgoing import Outgoing
from .store import HistoryStore, HistoryUnavailable
from .stores import make_store, store_names
from .tails import Policy, Stream, TailBudget, check_policy

__all__ = ["ROOM_PREFIX", "History", "Policy", "Settings", "Stream", "TailBudget", "check_policy"]

if TYPE_CHECKING:
    from ..server.connection import Connection
    from ..server.hub import Hub

logger = logging.getLogger("asok_green")

#: The prefix of room streams' names.
ROOM_PREFIX = "room:"

#: Most path or room names whose lookup (stream or no history) is remembered.
_LOOKUP_CACHE_LIMIT = 10_000


class Settings:
    """The history settings of an app: its config first, then the environment."""

    def __init__(self, config: Any) -> None:
        """Settings read from ``config`` (a mapping, or None)."""
        self._config = config or {}

    def get(self, name: str, default: Any = None) -> Any:
        """The setting ``name``, or ``default``."""
        value = self._config.get(name) if hasattr(self._config, "get") else None
        if value in (None, ""):
            value = os.environ.get(name)
        return default if value in (None, "") else value


class History:
    """The streams with history of one hub, and the store that keeps them."""

    def __init__(self, hub: Hub) -> None:
        """No stream keeps history until :meth:`keep` says so."""
        self.hub = hub
        self._route_policies: dict[Any, Policy] = {}
        self._room_policies: list[tuple[str, Policy]] = []
        self._streams: dict[str, Stream] = {}
        self._paths: dict[str, Stream | None] = {}
        self._rooms: dict[str, Stream | None] = {}
        self._store: HistoryStore | None = None
        #: One budget for every tail held in memory (the streams', and the memory store's).
        self._tail_budget = TailBudget(hub.limits.history_memory)

    # -- configuration ------------------------------------------------------------

    def keep(self, pattern: str, size: int = 200, ttl: float | None = None) -> None:
        """Keep history for the paths of route ``pattern`` or the rooms matching ``room:<glob>``."""
        policy = check_policy(size, ttl)
        if pattern.startswith(ROOM_PREFIX):
            self._room_policies.insert(0, (pattern, policy))  # the latest call wins
        else:
            self._route_policies[self.hub.routes.route(pattern)] = policy
        self._paths.clear()
        self._rooms.clear()

    @property
    def store(self) -> HistoryStore:
        """The store (opened on first use from ``WS_HISTORY_STORE`` and ``WS_HISTORY_PATH``)."""
        if self._store is None:
            settings = Settings(getattr(self.hub.app, "config", None))
            name = settings.get("WS_HISTORY_STORE") or self._default_store_name()
            store = make_store(str(name).strip().lower(), settings)
            share = getattr(store, "share_budget", None)
            if share is not None:
                share(self._tail_budget)
            store.start(self.hub)
            self._store = store
            logger.info("stream history kept by the %s store", name)
        return self._store

    @store.setter
    def store(self, store: HistoryStore) -> None:
        self._store = store

    def _default_store_name(self) -> str:
        if self.hub.node.distributed and "redis" in store_names():
            return "redis"
        return "sqlite"

    @property
    def distributes(self) -> bool:
        """True when the store itself carries messages to the other processes (the hub does not)."""
        return bool(getattr(self.store, "distributes", False))

    def start(self) -> None:
        """Open the store now (a store that cannot open fails at start-up, not at the first message)."""
        self.store  # noqa: B018

    def stop(self) -> None:
        """Release the store."""
        if self._store is not None:
            self._store.stop()

    # -- which streams keep history ------------------------------------------------

    def path_stream(self, path: str) -> Stream | None:
        """The stream of ``path``, or None when its route keeps no history."""
        try:
            return self._paths[path]
        except KeyError:
            pass
        route = self.hub.routes.match(path)[0]
        policy = self._route_policies.get(route) if route is not None else None
        stream = None if policy is None else self._stream(path, policy)
        _remember(self._paths, path, stream)
        return stream

    def room_stream(self, room: str) -> Stream | None:
        """The stream of ``room``, or None when no ``room:`` pattern matches it."""
        try:
            return self._rooms[room]
        except KeyError:
            pass
        name = ROOM_PREFIX + room
        policy = next((p for glob, p in self._room_policies if fnmatch.fnmatchcase(name, glob)), None)
        stream = None if policy is None else self._stream(name, policy)
        _remember(self._rooms, room, stream)
        return stream

    def stream_named(self, name: str) -> Stream:
        """The stream ``name`` (``/path`` or ``room:name``), made with the default policy if no pattern matches it."""
        stream = self._streams.get(name)
        if stream is None:
            found = self.room_stream(name[len(ROOM_PREFIX) :]) if name.startswith(ROOM_PREFIX) else None
            if found is None and not name.startswith(ROOM_PREFIX):
                found = self.path_stream(name)
            stream = found or self._stream(name, Policy(200, None))
        return stream

    def _stream(self, name: str, policy: Policy) -> Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = Stream(name, policy, self._tail_budget)
            self.store.configure(name, policy.size, policy.ttl)
        return stream

    def loaded(self, name: str) -> Stream | None:
        """The stream ``name`` if this process holds it now (it has clients here), else None."""
        return self._streams.get(name)

    # -- names are leased: a stream nobody here uses is let go ------------------------------

    def closed(self, conn: Connection) -> None:
        """``conn`` closed: the streams of its path and rooms go if no connection here is left in them."""
        self.path_vacated(conn.path)
        for room in self.hub.state.rooms_of(conn):
            self.room_vacated(room)

    def path_vacated(self, path: str) -> None:
        """If no connection here is on ``path`` any more, let its stream go (its history stays in the store)."""
        if path not in self.hub.state.by_path:
            self._paths.pop(path, None)
            self._settle(self._streams.get(path))

    def room_vacated(self, room: str) -> None:
        """If no connection here is in ``room`` any more, let its stream go (its history stays in the store)."""
        if room not in self.hub.state.rooms:
            self._rooms.pop(room, None)
            self._settle(self._streams.get(ROOM_PREFIX + room))

    def _settle(self, stream: Stream | None) -> None:
        """Let ``stream`` go if nobody here gets its messages and no replay or fill uses it (nothing stays)."""
        if stream is None or stream.busy or self.members(stream):
            return
        name = stream.name
        current = self._streams.get(name)
        if current is stream:
            del self._streams[name]
            if name.startswith(ROOM_PREFIX):
                self._rooms.pop(name[len(ROOM_PREFIX) :], None)
            else:
                self._paths.pop(name, None)
        elif current is not None:
            return  # let go already, and loaded again since
        stream.unload()
        release = getattr(self._store, "release", None)
        if release is not None:
            release(name)

    def table_sizes(self) -> dict[str, int]:
        """How many entries each table of the history holds in memory (streams, lookups, tails, the store's)."""
        store_size = getattr(self._store, "table_size", None)
        return {
            "streams": len(self._streams),
            "lookups": len(self._paths) + len(self._rooms),
            "tails": len(self._tail_budget),
            "tail_bytes": self._tail_budget.used,
            "store": store_size() if store_size is not None else 0,
        }

    def members(self, stream: Stream) -> Iterable[Connection]:
        """This process' connections that get ``stream``'s messages."""
        state = self.hub.state
        name = stream.name
        if name.startswith(ROOM_PREFIX):
            return state.rooms.get(name[len(ROOM_PREFIX) :], ())
        return state.by_path.get(name, ())

    # -- publishing and delivering ---------------------------------------------------

    def publish(self, stream: Stream, message: Outgoing, exclude: Connection | None) -> int:
        """Append ``message`` to ``stream`` and deliver it with its offset; how many got it here.

        A store that gives the offset later (Redis: after a round trip, or after
        an outage) has only queued it when ``publish`` returns: plain clients get
        the message now, as they would without history, and v1 clients when the
        offset comes. A store that fails does not stop delivery: the message
        goes out without an offset, and the store starts the stream's next epoch.
        """
        delivered = 0
        called = later = False

        def deliver(epoch: str, offset: int) -> None:
            nonlocal delivered, called
            called = True
            delivered = self.deliver(stream, epoch, offset, message, exclude, v1_only=later)

        try:
            self.store.publish(stream.name, message.opcode, message.payload, deliver)
        except Exception as exc:
            self.hub.stats["history_errors"] += 1
            log_limited(
                logger,
                logging.ERROR,
                "history store",
                self.hub.limits,
                "history store failed on stream %s (%r): message delivered without an offset",
                stream.name,
                exc,
            )
            return self.hub.fan_out(self.members(stream), message, exclude)
        if not called:
            # No offset yet: the plain clients' copy goes now, the v1 clients' with the offset.
            later = True
            delivered = self.hub.fan_out(self.members(stream), message, exclude, v1=False)
        self._settle(stream)
        return delivered

    def deliver(
        self,
        stream: Stream,
        epoch: str,
        offset: int,
        message: Outgoing,
        exclude: Connection | None,
        v1_only: bool = False,
    ) -> int:
        """Deliver message ``offset`` of ``stream`` here, after any missing before it; how many got it.

        ``v1_only``: its plain clients had it already (when it was published here).
        """
        # A store that gives offsets later may call back after the stream was let go (and
        # maybe loaded again): the stream held now is the one that knows the clients' position.
        stream = self._streams.get(stream.name, stream)
        if stream.backlog is not None:
            # Missing messages are being read: this one waits its turn.
            stream.backlog.append((epoch, offset, message, exclude, v1_only))
            return 0
        if epoch != stream.epoch or offset <= stream.last + 1:
            delivered = self._deliver_now(stream, epoch, offset, message, exclude, v1_only)
            self._settle(stream)
            return delivered
        stream.backlog = []
        try:
            self._fill(stream, offset)
        finally:
            backlog, stream.backlog = stream.backlog, None
        delivered = self._deliver_now(stream, epoch, offset, message, exclude, v1_only)
        for item in backlog:
            self.deliver(stream, *item)
        self._settle(stream)
        return delivered

    def _deliver_now(
        self,
        stream: Stream,
        epoch: str,
        offset: int,
        message: Outgoing,
        exclude: Connection | None,
        v1_only: bool = False,
    ) -> int:
        if epoch != stream.epoch:
            stream.enter_epoch(epoch, offset - 1)
        elif offset <= stream.last:
            return 0  # delivered already (read from the store to fill a gap)
        stream.last = offset
        message.in_stream(stream.prefix, offset)
        stream.remember(offset, time(), message)
        return self.hub.fan_out(self.members(stream), message, exclude, stream.held, True if v1_only else None)

    def _fill(self, stream: Stream, upto: int) -> None:
        """Read the messages between the last delivered here and ``upto`` (published elsewhere) and deliver them."""
        epoch = stream.epoch
        try:
            replay = self.store.read_since(stream.name, epoch, stream.last)  # may yield
        except Exception:
            logger.exception("reading history of stream %s failed", stream.name)
            replay = None
        if replay is None or replay[0] != epoch:
            # Out of reach: the clients see the gap and resume (continuity_lost if need be).
            stream.forget_tail()
            return
        for offset, opcode, data in replay[2]:
            if offset >= upto:
                break
            # v1 clients only: a plain client may have had it from the process that published it
            # (one it was connected to before a restart), and plain clients never get a copy twice.
            self._deliver_now(stream, epoch, offset, Outgoing(opcode, data), None, v1_only=True)

    # -- attaching a v1 connection: position, or replay then live ------------------------------

    def attach(self, conn: Connection, stream: Stream, since: envelopes.Since | None) -> None:
        """Tell the v1 connection ``conn`` (already a member) where ``stream`` stands, or replay what it missed.

        May yield (the store is read); meanwhile the stream's messages for
        ``conn`` are held, and afterwards those it was not given go out, in order.
        """
        held = stream.held
        if held is None:
            held = stream.held = {}
        queued = held[conn] = []
        answer = None
        code = CLOSE_INTERNAL_ERROR
        try:
            answer = self._answer(conn, stream, since)
        except HistoryUnavailable as exc:
            # The store's server is down: the client keeps its position and tries again later.
            code = CLOSE_TRY_AGAIN
            logger.info("stream %s cannot be resumed for %s now: %s", stream.name, conn.addr, exc)
        except Exception:
            logger.exception("resuming stream %s for %s failed", stream.name, conn.addr)
        finally:
            del held[conn]
            if not held and stream.held is held:
                stream.held = None
            self._settle(stream)  # the connection may have left while the store was read
        if answer is None:
            conn.close(code, "stream history unavailable, reconnect")
            return
        prefix, upto = answer
        for message in queued:
            if message.offset > upto or message.stream_prefix != prefix:
                conn.send_counted(message.v1_frame_for(conn.deflate))

    def _answer(self, conn: Connection, stream: Stream, since: envelopes.Since | None) -> tuple[bytes, int]:
        """Send ``position``, or the replay and ``resumed``, or ``continuity_lost``.

        Returns the envelope prefix and the offset the client has after it.
        """
        if stream.epoch is None:
            epoch, last = self.store.position(stream.name)  # may yield
            if stream.epoch is None:
                stream.enter_epoch(epoch, last)
        if since is None:
            conn.send_text(envelopes.notice("position", stream.name, stream.epoch, stream.last))
            return stream.prefix, stream.last
        replayed = stream.tail_since(since, time())
        if replayed is None:
            replayed = self._read(stream, since)  # may yield
        if replayed is None:
            return self._partial(conn, stream, since)
        deflate = conn.deflate
        for message in replayed:
            conn.send_counted(message.v1_frame_for(deflate))
        upto = replayed[-1].offset if replayed else since.offset
        conn.send_text(envelopes.notice("resumed", stream.name, since.epoch, upto, replayed=len(replayed)))
        prefix = replayed[-1].stream_prefix if replayed else envelopes.stream_prefix(stream.name, since.epoch)
        return prefix, upto

    def _partial(self, conn: Connection, stream: Stream, since: envelopes.Since) -> tuple[bytes, int]:
        """Send ``continuity_lost``, then what the stream's epoch still holds (for a gap too long only).

        The notice's offset is the one just before the first message that
        follows it, so a client that takes it as its position accepts them.
        """
        held: list[Outgoing] = []
        if since.epoch == stream.epoch:
            reason = envelopes.HISTORY_EXCEEDED
            held = self._held(stream)  # may yield
        else:
            reason = envelopes.EPOCH_CHANGED
        if not held:
            conn.send_text(envelopes.notice("continuity_lost", stream.name, stream.epoch, stream.last, reason=reason))
            return stream.prefix, stream.last
        first = held[0]
        notice = envelopes.notice(
            "continuity_lost", stream.name, stream.epoch, first.offset - 1, reason=reason, replayed=len(held)
        )
        conn.send_text(notice)
        deflate = conn.deflate
        for message in held:
            conn.send_counted(message.v1_frame_for(deflate))
        return held[-1].stream_prefix, held[-1].offset

    def _held(self, stream: Stream) -> list[Outgoing]:
        """Every message the store still holds of the stream's epoch, oldest first (none if it cannot say)."""
        read = getattr(self.store, "read_held", None)
        if read is None:
            return []
        replay = read(stream.name, stream.epoch)  # may yield
        if replay is None or replay[0] != stream.epoch:
            return []
        return self._replayed(stream, replay)

    def _read(self, stream: Stream, since: envelopes.Since) -> list[Outgoing] | None:
        """The messages after ``since`` from the store, or None when it no longer has them all."""
        replay = self.store.read_since(stream.name, since.epoch, since.offset)  # may yield
        if replay is None:
            return None
        return self._replayed(stream, replay)

    def _replayed(self, stream: Stream, replay: tuple) -> list[Outgoing]:
        """The store's entries as stream messages; those not yet delivered here go to everyone now."""
        epoch, _, entries = replay
        prefix = stream.prefix if epoch == stream.epoch else envelopes.stream_prefix(stream.name, epoch)
        messages = []
        for offset, opcode, data in entries:
            message = Outgoing(opcode, data)
            message.in_stream(prefix, offset)
            messages.append(message)
        if epoch == stream.epoch and messages and messages[-1].offset > stream.last:
            # Published by another process and not yet delivered here: everyone gets them now
            # (this connection's copies are held, and dropped as already replayed).
            for message in messages:
                if message.offset > stream.last:
                    self._deliver_now(stream, epoch, message.offset, Outgoing(message.opcode, message.payload), None)
        return messages


def _remember(cache: dict, key: str, value: Any) -> None:
    if len(cache) >= _LOOKUP_CACHE_LIMIT:
        cache.clear()
    cache[key] = value
