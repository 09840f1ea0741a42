"""Connection: one client's WebSocket, as a handler sees it, with its own outbound queue.

A connection is three layers of one object (one set of ``__slots__``, no
objects of its own beside them): :class:`~asok_green.server.outbound.Outbound`,
the writing half and the closing handshake (writes never block the caller, a
client that does not read is closed 1008); :class:`~asok_green.server.inbound.Inbound`,
the reading half (no greenlet while idle, every reader takes turns with the
others); and :class:`Connection`, what handlers call. Every per-connection
buffer has a bound: the reader's (``max_message_size``) and the outbound
queue (``max_queue``).

A broadcast does not come through here to be encoded: the hub takes each
recipient's frame from the message encoded once
(:class:`asok_green.protocol.outgoing.Outgoing`) and hands it to
:meth:`~asok_green.server.outbound.Outbound.send_frame`.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable
from typing import Any

from ..protocol import envelopes
from ..protocol.deflate import PerMessageDeflate, compressed_frame
from ..protocol.frames import OP_TEXT, encode_frame
from ..protocol.outgoing import encode_message, message_payload
from .inbound import Inbound
from .outbound import CLOSED, CLOSING, OPEN

__all__ = ["CLOSED", "CLOSING", "OPEN", "Connection", "V1Connection"]


def _no_request(conn: Any) -> None:
    """``conn.request`` when no framework is behind the app: there is no request object to give."""
    return None


class Connection(Inbound):
    """One WebSocket client, as handlers see it.

    Attributes of the Asok contract: ``user`` (the logged-in User model instance or
    None), ``session``, ``params`` (the ``[param]`` captures of the route), ``path``,
    ``headers`` (the handshake's headers, lower-case keys) and ``addr``
    (``(ip, port)``). Handlers may set attributes of their own on it.
    """

    __slots__ = (
        "path",
        "params",
        "headers",
        "addr",
        "user",
        "session",
        "login_sid",
        "_room_set",
        "_live",
        "__dict__",
        "__weakref__",
    )

    #: False: this client gets today's frames, unwrapped (see :class:`V1Connection`).
    speaks_v1 = False

    #: What makes ``conn.request`` from a connection, on first use: nothing for a plain
    #: WSGI app; the bridge puts Asok's here (asok_green.bridge.asok_framework).
    request_factory: Callable[[Any], Any] = staticmethod(_no_request)

    def __init__(
        self,
        server: Any,
        sock: socket.socket,
        addr: tuple,
        path: str,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        user: Any = None,
        session: Any = None,
        leftover: bytes = b"",
        login_sid: str | None = None,
        deflate: PerMessageDeflate | None = None,
        own_socket: bool = False,
    ):
        """Wrap an upgraded socket; ``leftover`` is data the client sent right after its handshake.

        ``server`` is the hub (:class:`asok_green.server.hub.WebSocketServer`).
        ``deflate`` holds the permessage-deflate parameters agreed in the
        handshake, or None when the connection is not compressed. With
        ``own_socket`` the connection closes ``sock`` when it finishes (a plain
        gevent socket can then be served by :meth:`watch`).
        """
        Inbound.__init__(self, server, sock, leftover, deflate, own_socket)
        self.path = path
        self.params = params or {}
        self.headers = headers
        self.addr = addr
        self.user = user
        self.session = session
        self.login_sid = login_sid
        self._room_set: set | None = None
        self._live: dict | None = None

    # -- what handlers call ------------------------------------------------

    def send(self, message: str | bytes) -> bool:
        """Send a text message (``str``) or a binary one (bytes). False once closing."""
        if self.deflate is None:
            return self._send_counted(encode_message(message))
        return self._send_counted(compressed_frame(*message_payload(message), self.deflate))

    def send_json(self, obj: Any) -> bool:
        """Send ``obj`` serialised as JSON in a text message."""
        payload = json.dumps(obj).encode("utf-8")
        if self.deflate is None:
            return self._send_counted(encode_frame(OP_TEXT, payload))
        return self._send_counted(compressed_frame(OP_TEXT, payload, self.deflate))

    def _send_counted(self, frame: bytes) -> bool:
        """:meth:`send_frame`, counted in the server's stats (broadcasts count theirs once each)."""
        if not self.send_frame(frame):
            return False
        stats = self.server.stats
        stats["messages_sent"] += 1
        stats["bytes_sent"] += len(frame)
        return True

    def join(self, room: str) -> bool:
        """Join ``room`` if its name is valid and the room authorizer allows it."""
        return self.server.join_room(self, room)

    def leave(self, room: str) -> None:
        """Leave ``room`` (no-op if not a member)."""
        self.server.leave_room(self, room)

    @property
    def rooms(self) -> frozenset:
        """The rooms this connection has joined."""
        return frozenset(self._room_set or ())

    @functools.cached_property
    def request(self) -> Any:
        """An Asok ``Request`` made from the handshake, as Asok's ``conn.request`` (GraphQL's authorize hook reads it).

        Built on first use (and kept, in the instance's ``__dict__``), so a
        connection nobody asks costs nothing more: its headers and cookies,
        ``REMOTE_ADDR`` (``conn.addr``), and ``request.user`` /
        ``request.session`` as the handshake resolved them. Reading the user
        never queries the database again. Handlers may set it as in Asok.
        The bridge installs what builds it (:attr:`request_factory`): None
        for a plain WSGI app.
        """
        return type(self).request_factory(self)

    @property
    def _rooms(self) -> set:
        # Asok's live-component helpers read ``conn._rooms`` directly.
        if self._room_set is None:
            self._room_set = set()
        return self._room_set

    @property
    def _live_comps(self) -> dict:
        # Asok's live-component helpers keep their per-connection state here.
        if self._live is None:
            self._live = {}
        return self._live

    def __repr__(self) -> str:
        user = getattr(self.user, "id", None)
        return f"<Connection {self.path} from {self.addr} user={user} {self.state}>"


class V1Connection(Connection):
    """A client that speaks ``asok-green.v1``: every app frame it gets is a JSON envelope.

    ``send`` and ``send_json`` wrap the message (``{"d": text}`` or
    ``{"b": base64}``); broadcasts use their shared v1 frame
    (:meth:`asok_green.protocol.outgoing.Outgoing.v1_frame_for`). ``since`` is the position the client
    resumes its path stream from (``?asok_since=``), or None.
    """

    __slots__ = ("since",)

    speaks_v1 = True

    def __init__(self, *args: Any, since: envelopes.Since | None = None, **kwargs: Any) -> None:
        """As :class:`Connection`, with the path stream position to resume from."""
        super().__init__(*args, **kwargs)
        self.since = since

    def send(self, message: str | bytes) -> bool:
        """Send a text message (``str``) or a binary one (bytes), in its envelope. False once closing."""
        return self.send_text(envelopes.plain_envelope(*message_payload(message)))

    def send_json(self, obj: Any) -> bool:
        """Send ``obj`` serialised as JSON, in its envelope."""
        return self.send_text(envelopes.plain_envelope(OP_TEXT, json.dumps(obj).encode("utf-8")))

    def send_text(self, text: bytes) -> bool:
        """Send ``text`` (UTF-8 JSON) as one text frame, as it is: envelopes and the server's notices."""
        if self.deflate is None:
            return self._send_counted(encode_frame(OP_TEXT, text))
        return self._send_counted(compressed_frame(OP_TEXT, text, self.deflate))
