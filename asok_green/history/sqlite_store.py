"""The embedded history store: one SQLite file in WAL mode, beside the app's database.

It survives a restart, and several processes may use the same file at once
(``--workers N``, or the old and the new process of a restart): each offset is
assigned inside a write transaction (``BEGIN IMMEDIATE``) from the row that
holds the stream's last offset, never from a counter in memory, so two
processes never hand out the same offset. A publish is one short transaction
on the event loop; it does not yield.

A stream's epoch is made when its row is created: a new file (the old one
deleted) starts every stream in a new epoch, and a write that fails marks the
stream so that its next message opens a new epoch too.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from time import monotonic, time
from typing import Any

from .store import Entry, Replay, new_epoch

logger = logging.getLogger("asok_green")

#: The file's name in the project's directory when ``WS_HISTORY_PATH`` is not set.
DEFAULT_FILE_NAME = "asok_green_history.sqlite3"

#: Seconds between two checks that the file on disk is still the one open.
_FILE_CHECK_INTERVAL = 1.0

#: Seconds between two deletions of expired messages in one stream.
_EXPIRE_INTERVAL = 1.0

#: Most trimmed rows of a stream left in the file before they are deleted (at most a quarter of its size).
_DELETE_BATCH = 64

#: Milliseconds a write waits for another process' transaction to end.
_BUSY_TIMEOUT_MS = 5000

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS streams ("
    " name TEXT PRIMARY KEY, epoch TEXT NOT NULL, last INTEGER NOT NULL, trimmed INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages ("
    " stream TEXT NOT NULL, offset INTEGER NOT NULL, opcode INTEGER NOT NULL, data BLOB NOT NULL,"
    " at REAL NOT NULL, PRIMARY KEY (stream, offset)) WITHOUT ROWID",
)


def default_path() -> str:
    """``asok_green_history.sqlite3`` in the project's directory (where Asok opens its database)."""
    return os.path.join(os.getcwd(), DEFAULT_FILE_NAME)


class SqliteStore:
    """History in a SQLite file shared by every process of the machine that opens it."""

    distributes = False

    def __init__(self, path: str, default_size: int = 200) -> None:
        """A store on the file ``path`` (created on first use)."""
        self.path = path
        self._default_size = default_size
        self._policies: dict[str, tuple[int, float | None]] = {}
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._inode: tuple[int, int] | None = None
        self._checked = 0.0
        self._expired: dict[str, float] = {}
        #: The highest offset of each stream whose rows this process deleted (trimmed rows wait for a batch).
        self._deleted: dict[str, int] = {}
        #: Streams whose last write failed: their next message opens a new epoch.
        self._broken: set[str] = set()

    # -- the file ---------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open database: opened on first use, again in a forked child or when the file was replaced."""
        db = self._db
        now = monotonic()
        if db is not None and self._pid == os.getpid():
            if now - self._checked < _FILE_CHECK_INTERVAL:
                return db
            self._checked = now
            if self._file_identity() == self._inode:
                return db
            logger.warning("history file %s was replaced or deleted: streams start new epochs", self.path)
            db.close()
        return self._open(now)

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _open(self, now: float) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_MS / 1000)
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        for statement in _SCHEMA:
            db.execute(statement)
        self._db, self._pid, self._checked = db, os.getpid(), now
        self._deleted.clear()
        self._inode = self._file_identity()
        return db

    # -- the store interface -------------------------------------------------------

    def start(self, hub: Any) -> None:
        """Open the file now, so that a path that cannot be written fails at start-up."""
        self._connection()

    def configure(self, stream: str, size: int, ttl: float | None) -> None:
        """Keep at most ``size`` messages of ``stream``, none older than ``ttl`` seconds."""
        self._policies[stream] = (size, ttl)

    def publish(self, stream: str, opcode: int, data: bytes, deliver: Callable[[str, int], None]) -> None:
        """Append in one write transaction, then ``deliver(epoch, offset)``."""
        db = self._connection()
        size, ttl = self._policies.get(stream, (self._default_size, None))
        now = time()
        db.execute("BEGIN IMMEDIATE")
        try:
            if stream in self._broken:
                epoch, offset, trimmed = self._start_over(db, stream)
            else:
                epoch, offset, trimmed = self._next_offset(db, stream, size)
            db.execute(
                "INSERT INTO messages (stream, offset, opcode, data, at) VALUES (?, ?, ?, ?, ?)",
                (stream, offset, opcode, data, now),
            )
            self._trim(db, stream, trimmed, size, ttl, now)
            db.execute("COMMIT")
        except BaseException:
            self._broken.add(stream)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._broken.discard(stream)
        deliver(epoch, offset)

    def read_since(self, stream: str, epoch: str, offset: int) -> Replay | None:
        """The messages after ``offset``, if the file still holds every one of them (and none is past its ttl)."""
        db = self._connection()
        row = db.execute("SELECT epoch, last, trimmed FROM streams WHERE name = ?", (stream,)).fetchone()
        if row is None:
            return None
        current, last, trimmed = row
        if epoch != current or offset > last or offset < trimmed:
            return None
        rows = db.execute(
            "SELECT offset, opcode, data, at FROM messages"
            " WHERE stream = ? AND offset > ? AND offset <= ? ORDER BY offset",
            (stream, offset, last),
        ).fetchall()
        ttl = self._policies.get(stream, (0, None))[1]
        if len(rows) != last - offset or (rows and ttl is not None and rows[0][3] < time() - ttl):
            return None
        entries: list[Entry] = [(o, op, bytes(data)) for o, op, data, _ in rows]
        return current, last, entries

    def read_held(self, stream: str, epoch: str) -> Replay | None:
        """Every message of ``epoch`` the file still holds within the ttl (None when the stream is in another epoch)."""
        db = self._connection()
        row = db.execute("SELECT epoch, last, trimmed FROM streams WHERE name = ?", (stream,)).fetchone()
        if row is None or row[0] != epoch:
            return None
        current, last, trimmed = row
        ttl = self._policies.get(stream, (0, None))[1]
        oldest = time() - ttl if ttl is not None else float("-inf")
        rows = db.execute(
            "SELECT offset, opcode, data, at FROM messages"
            " WHERE stream = ? AND offset > ? AND offset <= ? ORDER BY offset",
            (stream, trimmed, last),
        ).fetchall()
        kept = [(o, op, bytes(data)) for o, op, data, at in rows if at >= oldest]
        # Offsets consecutive up to the last: a hole (rows deleted meanwhile) keeps only what follows it.
        start = len(kept)
        while start and kept[start - 1][0] == last - (len(kept) - start):
            start -= 1
        return current, last, kept[start:]

    def release(self, stream: str) -> None:
        """No connection here uses ``stream``: forget what this process keeps about it (the file keeps its history)."""
        self._policies.pop(stream, None)
        self._expired.pop(stream, None)
        self._deleted.pop(stream, None)

    def table_size(self) -> int:
        """How many per-stream entries this process keeps in memory."""
        return len(self._policies) + len(self._expired) + len(self._deleted) + len(self._broken)

    def position(self, stream: str) -> tuple[str, int]:
        """The epoch and last offset; a stream never seen gets its row (and epoch) now."""
        db = self._connection()
        row = db.execute("SELECT epoch, last FROM streams WHERE name = ?", (stream,)).fetchone()
        if row is not None:
            return row[0], row[1]
        db.execute("BEGIN IMMEDIATE")
        try:
            epoch, last, _ = self._stream_row(db, stream)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return epoch, last

    def stop(self) -> None:
        """Close the file."""
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None

    # -- inside a write transaction ---------------------------------------------------

    @staticmethod
    def _stream_row(db: sqlite3.Connection, stream: str) -> tuple[str, int, int]:
        """``(epoch, last, trimmed)`` of ``stream``, its row created (new epoch) if it has none."""
        row = db.execute("SELECT epoch, last, trimmed FROM streams WHERE name = ?", (stream,)).fetchone()
        if row is not None:
            return row
        epoch = new_epoch()
        db.execute("INSERT INTO streams (name, epoch, last, trimmed) VALUES (?, ?, 0, 0)", (stream, epoch))
        return epoch, 0, 0

    @staticmethod
    def _next_offset(db: sqlite3.Connection, stream: str, size: int) -> tuple[str, int, int]:
        """Take the stream's next offset: ``(epoch, offset, trimmed)``, the messages past ``size`` trimmed."""
        rows = db.execute(
            "UPDATE streams SET last = last + 1, trimmed = MAX(trimmed, last + 1 - ?) WHERE name = ?"
            " RETURNING epoch, last, trimmed",
            (size, stream),
        ).fetchall()
        if rows:
            return rows[0]
        epoch = new_epoch()
        db.execute("INSERT INTO streams (name, epoch, last, trimmed) VALUES (?, ?, 1, 0)", (stream, epoch))
        return epoch, 1, 0

    def _start_over(self, db: sqlite3.Connection, stream: str) -> tuple[str, int, int]:
        """A write of ``stream`` was lost: it starts over in a new epoch, at offset 1."""
        epoch = new_epoch()
        db.execute("DELETE FROM messages WHERE stream = ?", (stream,))
        self._deleted.pop(stream, None)
        db.execute("INSERT OR REPLACE INTO streams (name, epoch, last, trimmed) VALUES (?, ?, 1, 0)", (stream, epoch))
        return epoch, 1, 0

    def _trim(
        self, db: sqlite3.Connection, stream: str, trimmed: int, size: int, ttl: float | None, now: float
    ) -> None:
        """Trim what is past ``ttl`` (once a second), and delete trimmed rows.

        Trimmed messages are out of reach at once (the stream's ``trimmed``
        says so); their rows are deleted a batch at a time, which costs a
        publish far less.
        """
        if ttl is not None and now - self._expired.get(stream, 0.0) >= _EXPIRE_INTERVAL:
            self._expired[stream] = now
            row = db.execute(
                "SELECT MAX(offset) FROM messages WHERE stream = ? AND at < ?", (stream, now - ttl)
            ).fetchone()
            if row[0] is not None and row[0] > trimmed:
                trimmed = row[0]
                db.execute("UPDATE streams SET trimmed = ? WHERE name = ?", (trimmed, stream))
        if trimmed >= self._deleted.get(stream, 0) + max(1, min(_DELETE_BATCH, size // 4)):
            db.execute("DELETE FROM messages WHERE stream = ? AND offset <= ?", (stream, trimmed))
            self._deleted[stream] = trimmed
