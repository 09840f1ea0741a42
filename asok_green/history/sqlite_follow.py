"""The SQLite store, followed: messages other processes append to the file reach this process' clients promptly.

Another process may append to a stream of the shared file: a script or an
``asok worker`` task (``asok_green.publish``), or the other process of a
restart. Without a follower, this process would deliver those messages only
when it next publishes on that stream itself. :class:`FollowedSqliteStore`
adds one greenlet that asks SQLite, every :data:`POLL_SECONDS`, whether any
other connection committed (``PRAGMA data_version``: no table is read when
nothing changed). When something did, it reads the last offset of each stream
that has clients here, and hands every message this process has not delivered
yet to ``hub.deliver_stream``, in offset order: plain and ``asok-green.v1``
clients get it, each once (the hub drops an offset it delivered already).

Which streams have clients here is kept up to date from what the hub's state
notes as paths and rooms come and go, never by going over every path held: a
look costs the same with one path held or 100,000, and nothing at all while no
stream with history has a client here.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from time import perf_counter
from typing import Any

import gevent

from .sqlite_store import SqliteStore

__all__ = ["MAX_SHARE", "POLL_SECONDS", "FollowedSqliteStore", "Follower", "next_pause"]

logger = logging.getLogger("asok_green.history")

#: Seconds between two looks at the file.
POLL_SECONDS = 0.05
#: The most of a core the follower takes: after a look that took t seconds, the next one waits
#: at least t * (1 / MAX_SHARE - 1) (a look over thousands of streams, while others append).
MAX_SHARE = 0.1
#: Streams named in one query.
_CHUNK = 500


def next_pause(spent: float) -> float:
    """Seconds to wait before the next look, after one that took ``spent``: at most :data:`MAX_SHARE` of a core."""
    return max(POLL_SECONDS, spent * (1 / MAX_SHARE - 1))


class Follower:
    """Reads what other processes appended to the file and delivers it to ``hub``'s clients."""

    def __init__(self, hub: Any, path: str) -> None:
        """Follow the SQLite history file ``path`` for ``hub``."""
        self.hub = hub
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._version: int | None = None
        #: The (epoch, last offset) of each followed stream when last looked at.
        self._seen: dict[str, tuple[str, int]] = {}
        #: Each path and each room held here -> the name of its stream with history, or None.
        self._paths: dict[str, str | None] = {}
        self._rooms: dict[str, str | None] = {}
        #: The streams followed: those with history that have clients here.
        self._names: set[str] = set()

    def run(self) -> None:
        """Look at the file every :data:`POLL_SECONDS` (less often after a long look), for ever (killed at stop)."""
        pause = POLL_SECONDS
        while True:
            gevent.sleep(pause)
            started = perf_counter()
            try:
                self.look()
            except sqlite3.Error as error:
                logger.info("following the history file %s: %s", self.path, error)
                self._close()
            except Exception:
                logger.exception("following the history file %s failed", self.path)
            pause = next_pause(perf_counter() - started)

    def look(self) -> int:
        """One look: deliver what others appended since the last one; how many messages were delivered."""
        new, gone = self._refresh()
        for name in gone:
            self._seen.pop(name, None)
            # Unfollowed, what this process knows of the stream goes stale as others append:
            # a client that resumes it later must be answered from the file, not from memory.
            stream = self.hub.history.loaded(name)
            if stream is not None:
                stream.unload()
        if not self._names:
            return 0  # nothing to deliver to: the next stream followed is first seen then
        db = self._connection()
        version = db.execute("PRAGMA data_version").fetchone()[0]
        changed, self._version = version != self._version, version
        delivered = 0
        asked = list(self._names) if changed else new
        rows = self._positions(db, asked)
        for name in set(asked) - {row[0] for row in rows}:
            self._seen.setdefault(name, ("", 0))  # no message yet: the first one will be new
        for name, epoch, last in rows:
            before = self._seen.get(name)
            self._seen[name] = (epoch, last)
            if before is None:
                continue  # first sight: what came before had no client here
            delivered += self._deliver(db, name, epoch, last, before)
        return delivered

    def _refresh(self) -> tuple[list[str], list[str]]:
        """Follow the streams of the paths and rooms that got clients here, no longer those that lost them.

        The hub's state notes which paths and rooms came or went (``came_or_went``);
        only those are looked up, so a look costs the same with one path held or
        100,000. Returns the names followed since the last look, and those let go.
        """
        history = getattr(self.hub, "history", None)
        if history is None:
            return [], []
        state = self.hub.state
        if state.came_or_went is None:  # the first look: everything held now
            pending = {("path", path) for path in state.by_path} | {("room", room) for room in state.rooms}
        else:
            pending = state.came_or_went
        state.came_or_went = set()
        new: list[str] = []
        gone: list[str] = []
        for kind, key in pending:
            held, current, lookup = (
                (self._paths, state.by_path, history.path_stream)
                if kind == "path"
                else (self._rooms, state.rooms, history.room_stream)
            )
            if key in current and key not in held:
                stream = lookup(key)
                name = held[key] = stream.name if stream is not None else None
                if name is not None:
                    new.append(name)
            elif key not in current and key in held:
                name = held.pop(key)
                if name is not None:
                    gone.append(name)
        self._names.difference_update(gone)
        self._names.update(new)
        return new, gone

    @staticmethod
    def _positions(db: sqlite3.Connection, names: list[str]) -> list[tuple[str, str, int]]:
        rows: list[tuple[str, str, int]] = []
        for start in range(0, len(names), _CHUNK):
            if start:
                gevent.sleep(0)  # a pass over thousands of streams lets everyone else run between chunks
            chunk = names[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows += db.execute(f"SELECT name, epoch, last FROM streams WHERE name IN ({marks})", chunk).fetchall()
        return rows

    def _deliver(self, db: sqlite3.Connection, name: str, epoch: str, last: int, before: tuple[str, int]) -> int:
        """Deliver the messages of ``name`` after ``before`` (or after what the hub has), up to ``last``."""
        after = before[1] if before[0] == epoch else 0
        stream = self.hub.history.stream_named(name)
        if stream.epoch == epoch:
            after = max(after, stream.last)
        if last <= after:
            return 0
        rows = db.execute(
            "SELECT offset, opcode, data FROM messages WHERE stream = ? AND offset > ? AND offset <= ? ORDER BY offset",
            (name, after, last),
        ).fetchall()
        delivered = 0
        for offset, opcode, data in rows:
            self.hub.deliver_stream(name, epoch, offset, opcode, bytes(data))
            delivered += 1
        return delivered

    def _connection(self) -> sqlite3.Connection:
        """A connection of its own to the file, opened again when the file was replaced."""
        identity = _identity(self.path)
        if self._db is not None and identity == self._identity:
            return self._db
        self._close()
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
        db.execute("PRAGMA busy_timeout = 5000")
        self._db, self._identity, self._version = db, identity, None
        self._seen.clear()
        return db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None

    def close(self) -> None:
        """Close the follower's connection; the hub's state stops noting paths and rooms for it."""
        self._close()
        self.hub.state.came_or_went = None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class FollowedSqliteStore(SqliteStore):
    """The SQLite store, plus a :class:`Follower` greenlet while it serves a hub."""

    def __init__(self, path: str, default_size: int = 200) -> None:
        """A store on the file ``path``; nothing is followed before :meth:`start`."""
        super().__init__(path, default_size)
        self.follower: Follower | None = None
        self._following: gevent.Greenlet | None = None

    def start(self, hub: Any) -> None:
        """Open the file and start following it for ``hub``."""
        super().start(hub)
        if self._following is None:
            self.follower = Follower(hub, self.path)
            self._following = gevent.spawn(self.follower.run)

    def stop(self) -> None:
        """Stop following, then close the file."""
        following, self._following = self._following, None
        if following is not None:
            following.kill(block=False)
        if self.follower is not None:
            self.follower.close()
        super().stop()
