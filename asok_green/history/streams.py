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
from collections import OrderedDict, deque
from collections.abc import Iterable
from itertools import islice
from time import time
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core.logs import log_limited
from ..protocol import envelopes
from ..protocol.frames import CLOSE_INTERNAL_ERROR, CLOSE_TRY_AGAIN
from ..protocol.outgoing import Outgoing
from .store import HistoryStore, HistoryUnavailable
from .stores import make_store, store_names

if TYPE_CHECKING:
    from ..server.connection import Connection
    from ..server.hub import Hub

logger = logging.getLogger("asok_green")

#: The prefix of room streams' names.
ROOM_PREFIX = "room:"

#: Most messages of one stream held in memory to answer replays without asking the store.
_TAIL_LIMIT = 500

#: Most payload bytes the tails of every stream hold together: beyond, the least recently
#: published streams' tails are emptied (their replays are read from the store).
_TAIL_BUDGET = 16 * 1024 * 1024

#: Most path or room names whose lookup (stream or no history) is remembered.
_LOOKUP_CACHE_LIMIT = 10_000


class Policy(NamedTuple):
    """How much history a stream keeps: ``size`` messages, none older than ``ttl`` seconds (None: no limit)."""

    size: int
    ttl: float | None


def check_policy(size: Any, ttl: Any) -> Policy:
    """The policy for ``size`` and ``ttl``; ValueError when they are not a positive count and duration."""
    if type(size) is not int or size <= 0:
        raise ValueError(f"history size must be a positive int, got {size!r}")
    if ttl is not None and (not isinstance(ttl, (int, float)) or ttl <= 0):
        raise ValueError(f"history ttl must be a positive number of seconds or None, got {ttl!r}")
    return Policy(size, None if ttl is None else float(ttl))


class TailBudget:
    """The payload bytes every stream's tail holds, and whose tail to empty first when that is too much."""

    def __init__(self, limit: int = _TAIL_BUDGET) -> None:
        """A budget of ``limit`` bytes, none used."""
        self.limit = limit
        self.used = 0
        #: Streams with a tail, the least recently added to first.
        self._recent: OrderedDict[Stream, None] = OrderedDict()

    def added(self, stream: Stream, size: int) -> None:
        """``stream``'s tail grew by ``size`` bytes (less if it dropped its oldest): empty others' if over."""
        self.used += size
        recent = self._recent
        recent[stream] = None
        recent.move_to_end(stream)
        while self.used > self.limit and len(recent) > 1:
            oldest = next(iter(recent))
            if oldest is stream:
                break
            oldest.forget_tail()

    def removed(self, stream: Stream, size: int) -> None:
        """``stream``'s tail was emptied of its ``size`` bytes."""
        self.used -= size
        self._recent.pop(stream, None)


class Stream:
    """One stream with history as this process sees it: its epoch, the last offset delivered here, its tail.

    ``held`` maps each connection whose replay is being read to the stream's
    messages held for it meanwhile. ``backlog`` collects the messages that
    arrive while missing ones are read from the store.
    """

    __slots__ = ("name", "policy", "epoch", "last", "prefix", "tail", "budget", "held", "backlog")

    def __init__(self, name: str, policy: Policy, budget: TailBudget | None = None):
        """A stream not yet loaded (no epoch known); its tail counts toward ``budget``."""
        self.name = name
        self.policy = policy
        self.epoch: str | None = None
        self.last = 0
        self.prefix = b""
        #: ``(offset, at, Outgoing)`` of the last messages delivered here, offsets consecutive.
        self.tail: deque = deque(maxlen=min(policy.size, _TAIL_LIMIT))
        self.budget = budget if budget is not None else TailBudget()
        self.held: dict[Connection, list[Outgoing]] | None = None
        self.backlog: list | None = None

    def enter_epoch(self, epoch: str, last: int) -> None:
        """From now on the stream is in ``epoch``, and ``last`` is its last offset delivered here."""
        self.epoch, self.last = epoch, last
        self.prefix = envelopes.stream_prefix(self.name, epoch)
        self.forget_tail()

    def unload(self) -> None:
        """Forget the epoch, last offset and tail: the next client of the stream here reads the store."""
        self.forget_tail()
        self.epoch, self.last, self.prefix = None, 0, b""

    def remember(self, offset: int, at: float, message: Outgoing) -> None:
        """Add message ``offset`` (delivered at ``at``) to the tail, dropping the oldest if it is full."""
        tail = self.tail
        if tail and offset != tail[-1][0] + 1:
            # Offsets in between were published by another process and not delivered here:
            # the tail holds consecutive offsets only, so it starts over.
            self.forget_tail()
        size = len(message.payload)
        if len(tail) == tail.maxlen:
            size -= len(tail.popleft()[2].payload)
        tail.append((offset, at, message))
        self.budget.added(self, size)

    def forget_tail(self) -> None:
        """Empty the tail (replays are then read from the store)."""
        tail = self.tail
        if tail:
            size = sum(len(message.payload) for _, _, message in tail)
            tail.clear()
            self.budget.removed(self, size)

    def tail_since(self, since: envelopes.Since, now: float) -> list[Outgoing] | None:
        """The messages after ``since`` if the tail holds every one of them, else None."""
        if since.epoch != self.epoch or since.offset > self.last:
            return None
        if since.offset == self.last:
            return []
        tail = self.tail
        if not tail or tail[0][0] > since.offset + 1:
            return None
        kept = list(islice(tail, since.offset + 1 - tail[0][0], None))
        ttl = self.policy.ttl
        if ttl is not None and kept[0][1] < now - ttl:
            return None
        return [message for _, _, message in kept]


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
        self._tail_budget = TailBudget()

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
        if stream.backlog is not None:
            # Missing messages are being read: this one waits its turn.
            stream.backlog.append((epoch, offset, message, exclude, v1_only))
            return 0
        if epoch != stream.epoch or offset <= stream.last + 1:
            return self._deliver_now(stream, epoch, offset, message, exclude, v1_only)
        stream.backlog = []
        try:
            self._fill(stream, offset)
        finally:
            backlog, stream.backlog = stream.backlog, None
        delivered = self._deliver_now(stream, epoch, offset, message, exclude, v1_only)
        for item in backlog:
            self.deliver(stream, *item)
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
            reason = envelopes.EPOCH_CHANGED if since.epoch != stream.epoch else envelopes.HISTORY_EXCEEDED
            conn.send_text(envelopes.notice("continuity_lost", stream.name, stream.epoch, stream.last, reason=reason))
            return stream.prefix, stream.last
        deflate = conn.deflate
        for message in replayed:
            conn.send_counted(message.v1_frame_for(deflate))
        upto = replayed[-1].offset if replayed else since.offset
        conn.send_text(envelopes.notice("resumed", stream.name, since.epoch, upto, replayed=len(replayed)))
        prefix = replayed[-1].stream_prefix if replayed else envelopes.stream_prefix(stream.name, since.epoch)
        return prefix, upto

    def _read(self, stream: Stream, since: envelopes.Since) -> list[Outgoing] | None:
        """The messages after ``since`` from the store, or None when it no longer has them all."""
        replay = self.store.read_since(stream.name, since.epoch, since.offset)  # may yield
        if replay is None:
            return None
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
