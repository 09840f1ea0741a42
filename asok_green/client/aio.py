"""The resume client under asyncio: :class:`AsyncResumingClient`, the blocking client read by a thread of its own.

    async with AsyncResumingClient("ws://127.0.0.1:8000/chat/general") as client:
        async for message in client:        # each message once, in order, across drops and restarts
            print(message.offset, message.data)

Why a thread and not an asyncio WebSocket. The rule (positions, duplicates,
gaps, replays) lives in :class:`~asok_green.client.resuming.ResumingClient`,
which reads websocket-client's blocking socket; one thread per client reads it
and hands each message to the event loop, so the asyncio client follows the
same rule, tested once, with no second WebSocket library. A client's cost is
one OS thread, which suits a service that holds a few streams, not thousands.

What the thread has read waits in an :class:`asyncio.Queue` until it is
awaited, so a ``recv`` that is cancelled (``asyncio.wait_for``, a task
cancelled) loses no message: the next one gets it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from .errors import ClientClosed, ContinuityLost
from .resuming import ResumingClient
from .wire import Message

__all__ = ["AsyncResumingClient"]


class AsyncResumingClient:
    """A :class:`ResumingClient` for asyncio: the same ``url`` and options, awaited.

    ``on_continuity_lost`` and ``on_event``, if given, are called in the event
    loop. :meth:`recv` raises what the blocking client's raises
    (:class:`ContinuityLost`, :class:`ClientClosed`, :class:`HandshakeFailed`)
    and ``TimeoutError`` after its ``timeout``; ``async for`` ends when the
    client is closed for good.
    """

    def __init__(
        self,
        url: str,
        *,
        on_continuity_lost: Callable[[ContinuityLost], None] | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        **options: Any,
    ) -> None:
        """Describe the connection (the options of :class:`ResumingClient`); :meth:`connect` opens it."""
        self._loop: asyncio.AbstractEventLoop | None = None
        lost = self._in_loop(on_continuity_lost) if on_continuity_lost is not None else None
        event = self._in_loop(on_event) if on_event is not None else None
        #: The blocking client underneath (its ``stats`` and ``positions`` may be read from any thread).
        self.client = ResumingClient(url, on_continuity_lost=lost, on_event=event, **options)
        self._queue: asyncio.Queue | None = None
        self._reader: threading.Thread | None = None
        self._final: BaseException | None = None
        self._closing = False
        # One thread for sends, joins and leaves, so they go out in the order they were awaited.
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="asok-green-send")

    # -- opening and reading ---------------------------------------------------------

    async def connect(self) -> AsyncResumingClient:
        """Open the first link; raises what refuses it (:class:`HandshakeFailed`, ``OSError``)."""
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._writer, self.client.connect)
        return self

    async def wait_ready(self, timeout: float | None = None) -> AsyncResumingClient:
        """Wait until the server has told where the path's stream stands; only before the first :meth:`recv`."""
        if self._reader is not None:
            raise RuntimeError("wait_ready comes before the first recv: the reading thread has started")
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(None, self.client.wait_ready, timeout)
        return self

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message, waiting up to ``timeout`` seconds (None: for ever); ``TimeoutError`` after that."""
        queue = self._start_reading()
        if self._final is not None and queue.empty():
            raise self._final
        try:
            item = await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("no message before the deadline") from None
        if isinstance(item, ContinuityLost):
            raise item
        if isinstance(item, BaseException):
            self._final = item
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.recv()
            except ClientClosed:
                return

    def _start_reading(self) -> asyncio.Queue:
        if self._queue is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._reader = threading.Thread(target=self._read, name="asok-green-client-reader", daemon=True)
            self._reader.start()
        return self._queue

    def _read(self) -> None:
        """The reading thread: every message (and lost continuity) into the queue, until the client ends."""
        loop, queue = self._loop, self._queue
        while True:
            try:
                item: Any = self.client.recv()
            except ContinuityLost as lost:
                item = lost
            except BaseException as final:  # closed, or refused for good: handed to the loop, which raises it
                self._hand_over(loop, queue, final)
                return
            if not self._hand_over(loop, queue, item):
                self.client.close()  # the loop is closed: nobody is left to read
                return

    @staticmethod
    def _hand_over(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: Any) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            return False
        return True

    # -- writing and closing -----------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        """Send a message now, or on the next link while this one is down."""
        await self._write(self.client.send, message)

    async def join(self, room: str) -> None:
        """Join ``room`` (on ``/asok/live``), and again with its position after every reconnect."""
        await self._write(self.client.join, room)

    async def leave(self, room: str) -> None:
        """Leave ``room``."""
        await self._write(self.client.leave, room)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good; what was received stays readable, then :meth:`recv` raises :class:`ClientClosed`."""
        if self._closing:
            return
        self._closing = True
        await self._write(self.client.close, code, reason)
        self._writer.shutdown(wait=False)

    async def _write(self, fn: Callable[..., None], *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def positions_dict(self) -> dict[str, dict[str, Any]]:
        """Every stream's last position, to pass as ``positions=`` to a later client."""
        return self.client.positions_dict()

    @property
    def stats(self) -> Any:
        """The blocking client's counters: links, reconnects, delivered, duplicates, gaps, replayed, ..."""
        return self.client.stats

    async def __aenter__(self) -> AsyncResumingClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- callbacks, in the loop --------------------------------------------------------

    def _in_loop(self, fn: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                fn(*args)
            else:
                loop.call_soon_threadsafe(fn, *args)

        return call
