"""Reader greenlets for watched connections: few of them, however many clients speak at once.

A watched connection has no greenlet while it is quiet (``Connection.watch``).
When its client sends something, the watcher's callback puts the connection's
read on :data:`READS`, and a reader greenlet runs it: the connection's handlers
for what arrived, then the watcher again. Until a reader takes it, a queued
read is one bound method: what the client sent waits in the socket. One reader serves the ready reads one
after another, with a turn for every other greenlet after every ``READS_PER_TURN``
(a read itself takes turns while it reads a lot). The hub starts
a reader when a read is queued and none is about to start, and one more
whenever a reader pauses in the middle of a read (its handler waits for
something) while other reads are queued: a slow handler still delays only its
own connection.

Why not a greenlet per read: when thousands of clients speak in the same instant
(a broadcast everyone answers, a reconnect storm), thousands of greenlets would
exist at once, each with its frames, its saved stack and its bookkeeping. Freed
a moment later, that memory stays with the allocators (pymalloc's arenas and
malloc's heap keep whatever one long-lived object pins), and a quiet server would
then hold several KB per connection more than before anyone spoke.

:data:`LINGERING` bounds the readers that wait a moment on a connection for
more data once its read is done (a conversation's next message), for the same
reason.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent

logger = logging.getLogger("asok_green")

#: Readers that may wait for more data on their connection at once, in the whole process.
MAX_LINGERING = 128

#: Reads one reader runs back to back before it lets every other ready greenlet run.
READS_PER_TURN = 32


def take_turn() -> None:
    """Let every other ready greenlet run, including those whose sockets became readable.

    ``gevent.sleep(0)`` is not enough: the loop keeps running callbacks (a chain
    of ``sleep(0)``) for up to its switch interval before it polls for I/O,
    so a flooding reader would still hold a probe's readable socket back by
    milliseconds. ``gevent.idle()`` waits until the loop has polled and run
    everything that was ready.
    """
    gevent.idle()


class Slots:
    """How many of something may happen at once; taken and given back without waiting."""

    __slots__ = ("free",)

    def __init__(self, size: int) -> None:
        """``size`` free slots."""
        self.free = size

    def take(self) -> bool:
        """Take a slot if one is free."""
        if self.free <= 0:
            return False
        self.free -= 1
        return True

    def give(self) -> None:
        """Give a slot back."""
        self.free += 1


class ReadQueue:
    """Reads waiting for a reader, and the readers that run them in turn."""

    __slots__ = ("ready", "starting")

    def __init__(self) -> None:
        """No read waiting, no reader."""
        self.ready: deque[Callable[[], Any]] = deque()
        #: The reader spawned last, until it starts (one killed before it started is dead: another is spawned).
        self.starting: gevent.Greenlet | None = None

    def add(self, read: Callable[[], Any]) -> None:
        """Queue ``read()`` for a reader; callable from the hub (it never waits)."""
        self.ready.append(read)
        self._start_reader()

    @property
    def waiting(self) -> int:
        """Reads queued and not started yet."""
        return len(self.ready)

    def _start_reader(self) -> None:
        starting = self.starting
        if self.ready and (starting is None or starting.dead):
            self.starting = gevent.spawn(self._serve)

    def _serve(self) -> None:
        """A reader: run queued reads until none is left."""
        self.starting = None
        ready = self.ready
        loop = gevent.get_hub().loop
        done = 0
        while ready:
            read = ready.popleft()
            # Runs in the hub the first time this greenlet pauses: if that is
            # in the middle of the read, the others must not wait for it.
            busy = [True]
            loop.run_callback(self._paused, busy)
            try:
                read()
            except Exception:
                logger.exception("reader failed: going on with the next connection")
            finally:
                busy[0] = False
            done += 1
            if ready and done >= READS_PER_TURN:
                take_turn()
                done = 0

    def _paused(self, busy: list) -> None:
        if busy[0]:
            self._start_reader()


#: The process's queue of reads: every watched connection's reads go through it.
READS = ReadQueue()

#: The process's slots for readers waiting on their connection for more data.
LINGERING = Slots(MAX_LINGERING)
