"""A WebSocket client of ``asok-green.v1`` that reconnects and loses nothing: :class:`ResumingClient`.

    with ResumingClient("ws://127.0.0.1:8000/chat/general") as client:
        for message in client:              # each message once, in order, across drops and restarts
            print(message.data)

It offers the subprotocol ``asok-green.v1``: the server then numbers the
messages of each stream that keeps history. When the link drops, the client
reconnects (exponential backoff, full jitter) with its last position
(``?asok_since=<epoch>:<offset>`` for the path's stream, ``since`` in each room's
``join_room``), and the server replays what it missed. It follows the client
rule of the protocol (:mod:`asok_green.client.positions`): a duplicate is
dropped, a gap makes it reconnect at once so the server fills it, and when the
server can no longer fill it, the client says so, with :class:`ContinuityLost`
raised from :meth:`ResumingClient.recv` (or given to ``on_continuity_lost``),
before the live messages go on.

The client is websocket-client's blocking socket, read by the thread that
calls :meth:`~ResumingClient.recv` (or iterates): no thread of its own. It works
in plain threads and, under gevent's monkey-patching, in greenlets (the socket
and the sleeps then yield). :meth:`~ResumingClient.send`, :meth:`~ResumingClient.join`
and :meth:`~ResumingClient.close` may be called from another thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .backoff import Backoff
from .errors import ClientClosed, ContinuityLost, HandshakeFailed
from .inbox import Inbox
from .positions import ROOM_PREFIX, StreamPositions
from .wire import Message, decode

__all__ = ["ResumingClient", "SUBPROTOCOL", "FINAL_CODES"]

SUBPROTOCOL = "asok-green.v1"

#: Close codes after which the client does not reconnect: the server meant it
#: (normal closure, protocol or policy errors, a message too big). 4000-4999, the app's own, too.
FINAL_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1010})


def _with_since(url: str, since: str | None) -> str:
    if since is None:
        return url
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("asok_since="))
    query = (query + "&" if query else "") + "asok_since=" + quote(since, safe=":")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class ResumingClient:
    """One logical connection to a stream, made of as many WebSocket links as it takes.

    ``url`` is ``ws://`` or ``wss://`` with the path (``/chat/general``, or
    ``/asok/live`` for rooms joined with :meth:`join`). ``cookies`` (a dict) or
    ``headers`` authenticate it, e.g. Asok's ``asok_session`` cookie; ``origin``
    defaults to the URL's own site. ``positions`` (``{stream: {"e": epoch, "o":
    offset}}``, as :meth:`positions_dict` gives) resumes where a previous
    client left. ``on_continuity_lost(error)`` is called instead of raising
    :class:`ContinuityLost`; ``on_event(kind, detail)`` hears ``open``,
    ``reconnecting`` and ``resumed``. ``ping_interval``: seconds of silence after
    which a ping checks the link (twice that without an answer drops it).
    """

    def __init__(
        self,
        url: str,
        *,
        cookies: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
        positions: Mapping[str, Any] | None = None,
        on_continuity_lost: Callable[[ContinuityLost], None] | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        ping_interval: float = 20.0,
        max_queued: int = 1000,
        final_codes: frozenset[int] = FINAL_CODES,
        sslopt: dict | None = None,
    ) -> None:
        """Describe the connection; the first link opens on :meth:`connect` or the first :meth:`recv`."""
        self.url = url
        self.positions = StreamPositions(positions)
        self.backoff = backoff or Backoff()
        #: Counters: links, reconnects, delivered, duplicates, gaps, replayed, continuity_lost, sent.
        self.stats: Counter = Counter()
        self._header = [f"{name}: {value}" for name, value in (headers or {}).items()]
        if cookies:
            self._header.append("Cookie: " + "; ".join(f"{name}={value}" for name, value in cookies.items()))
        self._origin = origin
        self._inbox = Inbox(self.positions, self.stats, on_continuity_lost, on_event)
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._max_queued = max_queued
        self._final_codes = final_codes
        self._sslopt = sslopt
        self._lock = threading.RLock()
        self._ws: Any = None
        self._v1 = False
        self._opened_at: float | None = None
        self._retry_at = 0.0
        self._pinged_at: float | None = None
        self._outbox: deque[str | bytes] = deque()
        self._rooms: dict[str, dict] = {}
        self._closed: ClientClosed | None = None

    # -- the public API ------------------------------------------------------------

    def connect(self) -> ResumingClient:
        """Open the first link now; raises what refuses it (:class:`HandshakeFailed`, ``OSError``)."""
        if self._ws is None and self._closed is None:
            self._open_link(raise_errors=True)
        return self

    def recv(self, timeout: float | None = None) -> Message:
        """The next message, waiting up to ``timeout`` seconds (None: for ever); ``TimeoutError`` after that.

        Reconnects as often as it takes meanwhile. Raises :class:`ContinuityLost`
        where messages were lost (unless ``on_continuity_lost`` is set; the next
        call goes on), :class:`ClientClosed` once closed, and
        :class:`HandshakeFailed` if the server refuses a reconnect for good.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._inbox:
                return self._inbox.pop()
            self._advance(deadline)

    def wait_ready(self, timeout: float | None = None) -> ResumingClient:
        """Wait until the server has told where the path's stream stands (a path that keeps history).

        From then on nothing published to the stream is missed. Messages read
        meanwhile wait for :meth:`recv`. ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inbox.told:
            self._advance(deadline)
        return self

    def _advance(self, deadline: float | None) -> None:
        """One step toward what the caller waits for: raise if closed for good, else reconnect or read."""
        if self._closed is not None:
            raise self._closed
        if self._ws is None:
            self._wait_to_retry(deadline)
            self._open_link(raise_errors=False)
            return
        self._read(deadline)

    def __iter__(self) -> Iterator[Message]:
        """Messages as they come, until the client is closed."""
        while True:
            try:
                yield self.recv()
            except ClientClosed:
                return

    def send(self, message: str | bytes) -> None:
        """Send a message now, or on the next link while this one is down (at most ``max_queued`` kept)."""
        with self._lock:
            if self._closed is not None:
                raise self._closed
            if self._ws is not None and self._send_now(message):
                return
            self._outbox.append(message)
            while len(self._outbox) > self._max_queued:
                self._outbox.popleft()

    def join(self, room: str) -> None:
        """Join ``room`` (``/asok/live``'s ``join_room``), and again with ``since`` after every reconnect."""
        with self._lock:
            if self._closed is not None:
                raise self._closed
            self._rooms[room] = {"op": "join_room", "room": room}
            if self._ws is not None:
                self._send_now(json.dumps(self._join_op(room)))  # else the next link joins it

    def leave(self, room: str) -> None:
        """Leave ``room``: it is not joined again, and its position is forgotten."""
        with self._lock:
            self._rooms.pop(room, None)
            self.positions.forget(ROOM_PREFIX + room)
            if self._ws is not None:
                self._send_now(json.dumps({"op": "leave_room", "room": room}))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good; messages already received stay readable, then :meth:`recv` raises :class:`ClientClosed`."""
        with self._lock:
            if self._closed is None:
                self._closed = ClientClosed(code, reason)
            ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(status=code, reason=reason.encode(), timeout=1)
            except Exception:
                ws.shutdown()

    def positions_dict(self) -> dict[str, dict[str, Any]]:
        """Every stream's last position, to pass as ``positions=`` to a later client."""
        return self.positions.as_dict()

    @property
    def connected(self) -> bool:
        """True while a link is open."""
        return self._ws is not None

    def __enter__(self) -> ResumingClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- links ------------------------------------------------------------------------

    def _link_url(self) -> str:
        path_stream = self._inbox.path_stream
        position = self.positions.get(path_stream) if path_stream else None
        return _with_since(self.url, position.as_since() if position else None)

    def _open_link(self, raise_errors: bool) -> None:
        import websocket

        try:
            ws = websocket.create_connection(
                self._link_url(),
                subprotocols=[SUBPROTOCOL],
                header=self._header,
                origin=self._origin,
                timeout=self._connect_timeout,
                enable_multithread=True,
                sslopt=self._sslopt,
            )
        except websocket.WebSocketBadStatusException as refused:
            status = refused.status_code
            body = refused.resp_body.decode("utf-8", "replace") if refused.resp_body else ""
            if raise_errors or (400 <= status < 500 and status != 429):
                raise HandshakeFailed(status, body) from None
            self._schedule_retry(None, None, f"HTTP {status}")
            return
        except (OSError, websocket.WebSocketException) as error:
            if raise_errors:
                raise
            self._schedule_retry(None, None, str(error) or type(error).__name__)
            return
        with self._lock:
            if self._closed is not None:
                ws.shutdown()
                return
            self._ws, self._v1 = ws, ws.getsubprotocol() == SUBPROTOCOL
            self._opened_at, self._pinged_at, self._inbox.told = time.monotonic(), None, False
            reconnected = self.stats["links"] > 0
            self.stats["links"] += 1
            self.stats["reconnects"] += reconnected
            for room in self._rooms:
                self._send_now(json.dumps(self._join_op(room)))
            outbox, self._outbox = self._outbox, deque()
            for message in outbox:
                if not self._send_now(message):
                    self._outbox.append(message)
        self._event("open", {"reconnected": reconnected, "url": self.url})

    def _send_now(self, message: str | bytes) -> bool:
        import websocket

        try:
            if isinstance(message, (bytes, bytearray)):
                self._ws.send_bytes(bytes(message))
            else:
                self._ws.send(message)
        except (OSError, websocket.WebSocketException):
            return False  # the reader finds out the link is gone
        self.stats["sent"] += 1
        return True

    def _join_op(self, room: str) -> dict:
        op = dict(self._rooms.get(room) or {"op": "join_room", "room": room})
        position = self.positions.get(ROOM_PREFIX + room)
        if position is not None:
            op["since"] = position.as_object()
        return op

    def _drop_link(self, code: int | None, reason: str, resume_now: bool = False) -> None:
        """Close the link (if still open) and plan the next one."""
        with self._lock:
            ws, self._ws = self._ws, None
        if ws is not None:
            ws.shutdown()
        lasted = None if self._opened_at is None else time.monotonic() - self._opened_at
        self._opened_at = None
        if resume_now:
            self.backoff.attempt += 1
            self._retry_at = time.monotonic()
            self._event("reconnecting", {"attempt": self.backoff.attempt, "delay": 0.0, "code": code, "reason": reason})
            return
        self._schedule_retry(lasted, code, reason)

    def _schedule_retry(self, lasted: float | None, code: int | None, reason: str) -> None:
        delay = self.backoff.next_delay(lasted)
        self._retry_at = time.monotonic() + delay
        self._event("reconnecting", {"attempt": self.backoff.attempt, "delay": delay, "code": code, "reason": reason})

    def _wait_to_retry(self, deadline: float | None) -> None:
        now = time.monotonic()
        if deadline is not None and deadline < self._retry_at:
            time.sleep(max(0.0, deadline - now))
            raise TimeoutError("no message before the deadline (reconnecting)")
        if self._retry_at > now:
            time.sleep(self._retry_at - now)

    # -- reading ------------------------------------------------------------------------

    def _read(self, deadline: float | None) -> None:
        """Read one frame of the link and act on it; ``TimeoutError`` once ``deadline`` passes."""
        import websocket

        wait = self._ping_interval
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("no message before the deadline")
        ws = self._ws
        if ws is None:
            return  # closed meanwhile, from another thread
        try:
            ws.settimeout(wait)
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            self._quiet_link(deadline)
            return
        except (OSError, websocket.WebSocketException) as error:
            if self._closed is None:
                self._drop_link(1006, str(error) or type(error).__name__)
            return
        self._pinged_at = None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            text = frame.data.decode("utf-8", "replace")
            self._take(decode(text) if self._v1 else Message(text))
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            self._take(Message(bytes(frame.data)))
        elif opcode == websocket.ABNF.OPCODE_CLOSE:
            self._server_closed(frame.data)

    def _quiet_link(self, deadline: float | None) -> None:
        """Nothing came for a while: ping once; a link that stays silent after its ping is dropped."""
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise TimeoutError("no message before the deadline")
        if self._pinged_at is None:
            self._pinged_at = now
            try:
                self._ws.ping()
            except Exception:
                self._drop_link(1006, "ping failed")
        elif now - self._pinged_at >= self._ping_interval:
            self._drop_link(1006, "no answer to a ping")

    def _server_closed(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        reason = payload[2:].decode("utf-8", "replace")
        if code is not None and (code in self._final_codes or 4000 <= code <= 4999):
            with self._lock:
                self._closed = ClientClosed(code, reason)
                ws, self._ws = self._ws, None
            if ws is not None:
                ws.shutdown()
            return
        self._drop_link(code, reason)

    def _take(self, item: Any) -> None:
        if self._inbox.take(item):
            self._drop_link(None, "gap: the server fills it", resume_now=True)

    def _event(self, kind: str, detail: dict) -> None:
        self._inbox.event(kind, detail)
