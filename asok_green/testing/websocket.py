"""A synchronous WebSocket for tests: send, receive with a deadline, rooms, presence, close codes.

Built on websocket-client. Every wait is for an event (a frame, a pong, the
end of the stream) with a deadline; when the deadline passes, the test fails
with what did arrive.

Two facts of asok_green make the waits exact:

* the server reads a connection only once it is registered and its
  ``on_connect`` handler has returned, and it handles what one client sends in
  order, answering a ping only after the handlers of every message before it
  have returned. A ping's pong is therefore a barrier: :meth:`TestWebSocket.sync`
  returns once the server has handled everything this socket sent before it,
  and every frame those handlers sent to this socket has arrived;
* the server closes the TCP connection only after ``on_disconnect`` returned,
  so :meth:`TestWebSocket.close` returns once the server is done with it.
"""

from __future__ import annotations

import json
import struct
import time
from collections import deque
from typing import Any

__all__ = ["TestWebSocket", "ReceiveTimeout", "ConnectionClosed", "HandshakeRefused", "RoomRefused"]

#: Asok's own announcements, kept apart from the app's messages (see ``TestWebSocket.presence_events``).
PRESENCE_TYPES = ("presence", "room_presence")


class ReceiveTimeout(AssertionError):
    """Nothing (or not what was asked for) arrived before the deadline; the message lists what did."""


class ConnectionClosed(AssertionError):
    """The server closed the WebSocket while the test waited for a message."""

    def __init__(self, message: str, code: int | None, reason: str) -> None:
        super().__init__(message)
        #: The close code the server sent (None: the stream ended without one).
        self.code = code
        self.reason = reason


class HandshakeRefused(AssertionError):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the handshake was refused with HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class RoomRefused(AssertionError):
    """The server refused to join a room (its error frame is in ``frame``)."""

    def __init__(self, room: str, frame: dict) -> None:
        super().__init__(f"joining room {room!r} was refused: {frame.get('message')!r}")
        self.room = room
        self.frame = frame


def _presence_event(text: str) -> dict | None:
    """The decoded frame if ``text`` is one of Asok's presence announcements, else None."""
    if '"presence"' not in text and '"room_presence"' not in text:
        return None
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if isinstance(frame, dict) and frame.get("op") == "broadcast" and frame.get("type") in PRESENCE_TYPES:
        return frame
    return None


class TestWebSocket:
    """One client WebSocket of a test: ``with client.websocket("/chat/general") as ws: ...``.

    Made by :meth:`asok_green.testing.TestClient.websocket`, which waits (with
    :meth:`sync`) until the server runs the connection: it is registered and its
    ``on_connect`` handler has returned.

    What :meth:`receive` returns are the app's messages, in order (``str`` for
    text, ``bytes`` for binary). Asok's presence announcements
    (``{"op": "broadcast", "type": "presence" | "room_presence", ...}``), which
    every socket gets when a user comes online, are kept apart in
    :attr:`presence_events` unless the socket was opened with
    ``presence_frames=True``.
    """

    __test__ = False

    def __init__(
        self,
        url: str,
        path: str,
        *,
        server: Any = None,
        cookies: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        origin: str | None = None,
        subprotocols: tuple[str, ...] | list[str] = (),
        timeout: float = 5.0,
        presence_frames: bool = False,
    ) -> None:
        """Open the WebSocket (raises :class:`HandshakeRefused` for an HTTP answer), then :meth:`sync`."""
        import websocket

        self.path = path
        self.timeout = timeout
        self._server = server
        self._keep_presence = presence_frames
        #: Every app message received, in order (those already returned by ``receive`` too).
        self.received: list[str | bytes] = []
        #: Asok's presence announcements received, decoded, in order.
        self.presence_events: list[dict] = []
        self._inbox: deque[str | bytes] = deque()
        self._presence_inbox: deque[dict] = deque()
        self._pings_sent = 0
        self._pong = 0
        #: The server's close code and reason once it closed (code None if the stream just ended).
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = False
        header = [f"{name}: {value}" for name, value in (headers or {}).items()]
        if cookies:
            header.append("Cookie: " + "; ".join(f"{name}={value}" for name, value in cookies.items()))
        try:
            self._ws = websocket.create_connection(
                url + path,
                origin=origin,
                header=header,
                subprotocols=list(subprotocols) or None,
                timeout=timeout,
                enable_multithread=True,
            )
        except websocket.WebSocketBadStatusException as refused:
            body = refused.resp_body.decode("utf-8", "replace") if refused.resp_body else ""
            raise HandshakeRefused(refused.status_code, body) from None
        self.sync()

    # -- sending ----------------------------------------------------------------

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message."""
        if isinstance(message, (bytes, bytearray, memoryview)):
            self._ws.send_bytes(bytes(message))
        else:
            self._ws.send(message)

    def send_text(self, text: str) -> None:
        """Send a text message."""
        self._ws.send(text)

    def send_bytes(self, data: bytes) -> None:
        """Send a binary message."""
        self._ws.send_bytes(data)

    def send_json(self, obj: Any) -> None:
        """Send ``obj`` as a JSON text message."""
        self._ws.send(json.dumps(obj))

    # -- receiving --------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> str | bytes:
        """The next app message: ``str`` for text, ``bytes`` for binary.

        Fails the test with :class:`ReceiveTimeout` (listing what did arrive) if
        none comes within ``timeout`` seconds (default: the client's), and with
        :class:`ConnectionClosed` if the server closes the socket first.
        """
        __tracebackhide__ = True
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._inbox:
            if self.closed:
                raise self._closed_error()
            if not self._read_frame(deadline):
                raise self._timed_out("no message", timeout)
        return self._inbox.popleft()

    def receive_text(self, timeout: float | None = None) -> str:
        """The next app message, which must be text."""
        __tracebackhide__ = True
        message = self.receive(timeout)
        if not isinstance(message, str):
            raise AssertionError(f"expected a text message on {self.path}, got bytes {message[:200]!r}")
        return message

    def receive_bytes(self, timeout: float | None = None) -> bytes:
        """The next app message, which must be binary."""
        __tracebackhide__ = True
        message = self.receive(timeout)
        if not isinstance(message, bytes):
            raise AssertionError(f"expected a binary message on {self.path}, got text {message[:200]!r}")
        return message

    def receive_json(self, timeout: float | None = None) -> Any:
        """The next app message, a text message decoded as JSON."""
        __tracebackhide__ = True
        text = self.receive_text(timeout)
        try:
            return json.loads(text)
        except ValueError:
            raise AssertionError(f"expected JSON on {self.path}, got {text[:200]!r}") from None

    def receive_presence(self, timeout: float | None = None) -> dict:
        """The next presence announcement (``presence`` or ``room_presence``), decoded."""
        __tracebackhide__ = True
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._presence_inbox:
            if self.closed:
                raise self._closed_error()
            if not self._read_frame(deadline):
                raise self._timed_out("no presence announcement", timeout)
        return self._presence_inbox.popleft()

    def sync(self, timeout: float | None = None) -> None:
        """Wait until the server has handled everything this socket sent so far.

        A ping goes out and this returns when its pong is back: the server's
        handlers of every earlier message have returned by then, and what they
        sent to this socket has arrived (it waits in :meth:`receive`'s queue).
        On a socket the server closed, returns at once.
        """
        __tracebackhide__ = True
        import websocket

        if self.closed:
            return
        self._pings_sent += 1
        wanted = self._pings_sent
        try:
            self._ws.ping(str(wanted))
        except (OSError, websocket.WebSocketConnectionClosedException):
            self._ended(None, "")
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._pong < wanted and not self.closed:
            if not self._read_frame(deadline):
                raise self._timed_out("no pong: the server did not handle what was sent", timeout)

    def assert_nothing_received(self) -> None:
        """After :meth:`sync`, no app message must be waiting (fails the test listing them if some are)."""
        __tracebackhide__ = True
        self.sync()
        if self._inbox:
            raise AssertionError(f"expected no message on {self.path}, got {list(self._inbox)!r}")

    # -- rooms and presence -------------------------------------------------------

    def join(self, room: str, since: dict | None = None) -> None:
        """Join ``room`` with ``{"op": "join_room"}`` (``/asok/live``'s operator); raises :class:`RoomRefused`."""
        __tracebackhide__ = True
        message: dict[str, Any] = {"op": "join_room", "room": room}
        if since is not None:
            message["since"] = since
        self._room_op(message)

    def leave(self, room: str) -> None:
        """Leave ``room`` with ``{"op": "leave_room"}``; returns once the server has handled it."""
        self._room_op({"op": "leave_room", "room": room})

    def _room_op(self, message: dict) -> None:
        __tracebackhide__ = True
        room = message["room"]
        before = len(self._inbox)
        self.send_json(message)
        self.sync()
        for index, item in enumerate(list(self._inbox)[before:], start=before):
            if isinstance(item, str) and '"error"' in item:
                frame = json.loads(item)
                if frame.get("type") == "error" and frame.get("room") == room:
                    del self._inbox[index]
                    raise RoomRefused(room, frame)

    def presence(self, room: str | None = None) -> list:
        """The users online (or in ``room``), as the server sees them once it has handled this socket's messages."""
        if self._server is None:
            raise RuntimeError("this socket was not opened by a TestClient: no server to ask")
        self.sync()
        hub = self._server.hub_for(self.path)
        if room is None:
            return sorted(self._server.call(hub.get_online_users), key=str)
        return sorted(self._server.call(hub.get_room_users, room), key=str)

    # -- closing --------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        return self._ws.getsubprotocol()

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> None:
        """Close with ``code``; returns once the server is done with the connection (``on_disconnect`` ran)."""
        __tracebackhide__ = True
        import websocket

        if self.closed:
            return
        try:
            self._ws.send_close(code, reason.encode("utf-8"))
        except (OSError, websocket.WebSocketConnectionClosedException):
            self._ended(None, "")
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            if not self._read_frame(deadline):
                self._drop()
                raise self._timed_out("the server did not end the connection", timeout)

    def wait_closed(self, timeout: float | None = None) -> int | None:
        """Wait until the server closes the socket; its close code (app messages stay for :meth:`receive`)."""
        __tracebackhide__ = True
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            if not self._read_frame(deadline):
                raise self._timed_out("the server did not close the socket", timeout)
        return self.close_code

    def __enter__(self) -> TestWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the reading ------------------------------------------------------------------

    def _read_frame(self, deadline: float) -> bool:
        """Read one frame and file it; False if the deadline passed first."""
        import websocket

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._ws.settimeout(remaining)
        try:
            opcode, frame = self._ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            return False
        except (OSError, websocket.WebSocketConnectionClosedException):
            self._ended(self.close_code, self.close_reason)
            return True
        if opcode == websocket.ABNF.OPCODE_TEXT:
            self._file(frame.data.decode("utf-8"))
        elif opcode == websocket.ABNF.OPCODE_BINARY:
            self._file(bytes(frame.data))
        elif opcode == websocket.ABNF.OPCODE_PONG:
            try:
                self._pong = max(self._pong, int(frame.data or b"0"))
            except ValueError:
                pass
        elif opcode == websocket.ABNF.OPCODE_CLOSE:
            code, reason = None, ""
            if len(frame.data) >= 2:
                code = struct.unpack("!H", frame.data[:2])[0]
                reason = frame.data[2:].decode("utf-8", "replace")
            self.close_code, self.close_reason = code, reason
            self._await_end(deadline)
        return True

    def _file(self, message: str | bytes) -> None:
        if isinstance(message, str) and not self._keep_presence:
            event = _presence_event(message)
            if event is not None:
                self.presence_events.append(event)
                self._presence_inbox.append(event)
                return
        self.received.append(message)
        self._inbox.append(message)

    def _await_end(self, deadline: float) -> None:
        """After the close frames: wait for the server to end the TCP stream, which it does after on_disconnect."""
        sock = self._ws.sock
        try:
            while sock is not None:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not sock.recv(4096):
                    break
        except OSError:
            pass
        self._ended(self.close_code, self.close_reason)

    def _ended(self, code: int | None, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        self.closed = True
        self._drop()

    def _drop(self) -> None:
        self._ws.shutdown()

    def _timed_out(self, what: str, timeout: float | None) -> ReceiveTimeout:
        waited = self.timeout if timeout is None else timeout
        return ReceiveTimeout(self._report(f"{what} on {self.path} within {waited:g}s."))

    def _closed_error(self) -> ConnectionClosed:
        headline = f"the server closed {self.path}: code {self.close_code}, reason {self.close_reason!r}."
        return ConnectionClosed(self._report(headline), self.close_code, self.close_reason)

    def _report(self, headline: str) -> str:
        """``headline``, then what this socket received: the test's failure message."""
        lines = [headline]
        if self.closed and not headline.startswith("the server closed"):
            lines.append(f"The server closed it: code {self.close_code}, reason {self.close_reason!r}.")
        lines.append(f"Received so far: {self.received!r}")
        if self._inbox:
            lines.append(f"Waiting, not yet returned: {list(self._inbox)!r}")
        if self.presence_events:
            lines.append(f"Presence announcements: {self.presence_events!r}")
        return "\n".join(lines)
