"""The encoded-once message: a broadcast is framed, compressed and wrapped once for all its recipients.

:class:`Outgoing` holds one message and builds, the first time a recipient
needs it and never again, each form the recipients may take: the plain frame,
the permessage-deflate frame for a window size, and the ``asok-green.v1``
envelope's frame. The hub hands these same bytes to every connection.
"""

from __future__ import annotations

import json
from typing import Any

from . import envelopes
from .deflate import PerMessageDeflate, compressed_frame
from .frames import OP_BINARY, OP_TEXT, encode_frame

__all__ = ["Outgoing", "encode_message", "message_payload"]


def message_payload(message: str | bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """``(opcode, payload)`` for ``message``: text for ``str``, binary for bytes-like."""
    if isinstance(message, str):
        return OP_TEXT, message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return OP_BINARY, bytes(message)
    raise TypeError(f"WebSocket messages are str or bytes, not {type(message).__name__}")


def encode_message(message: str | bytes | bytearray | memoryview) -> bytes:
    """One complete, uncompressed frame for ``message``: text for ``str``, binary for bytes-like."""
    return encode_frame(*message_payload(message))


class Outgoing:
    """One message encoded once for any number of recipients.

    ``frame`` is the plain frame, built at once. :meth:`frame_for` gives the
    frame for one connection: the plain one, or for a connection with
    permessage-deflate the compressed one, built the first time a window size
    asks for it and shared after that. The server never takes compression
    context over between messages, so the same bytes suit every such client.

    :meth:`v1_frame_for` gives the frame for an ``asok-green.v1`` connection:
    the message in its JSON envelope (with its stream, epoch and offset when it
    is a message of a stream that keeps history), built the first time a v1
    connection needs it and shared after that.
    """

    __slots__ = ("opcode", "payload", "frame", "_deflated", "offset", "stream_prefix", "_v1")

    def __init__(self, opcode: int, payload: bytes) -> None:
        """A message of ``opcode`` (text or binary) carrying ``payload``."""
        self.opcode = opcode
        self.payload = payload
        self.frame = encode_frame(opcode, payload)
        self._deflated: dict[int, bytes] | None = None
        #: Its offset in its stream (0: not a message of a stream that keeps history).
        self.offset = 0
        self.stream_prefix = b""
        self._v1: Outgoing | None = None

    @classmethod
    def of(cls, message: str | bytes | bytearray | memoryview) -> Outgoing:
        """The message for ``str`` (text) or bytes-like (binary) ``message``."""
        return cls(*message_payload(message))

    @classmethod
    def json(cls, obj: Any) -> Outgoing:
        """A text message carrying ``obj`` serialised as JSON."""
        return cls(OP_TEXT, json.dumps(obj).encode("utf-8"))

    def frame_for(self, deflate: PerMessageDeflate | None) -> bytes:
        """The frame to send to a connection whose permessage-deflate parameters are ``deflate``."""
        if deflate is None:
            return self.frame
        bits = deflate.server_max_window_bits
        cache = self._deflated
        if cache is None:
            cache = self._deflated = {}
        frame = cache.get(bits)
        if frame is None:
            frame = cache[bits] = compressed_frame(self.opcode, self.payload, deflate)
        return frame

    def in_stream(self, prefix: bytes, offset: int) -> None:
        """Make this message number ``offset`` of the stream whose envelope prefix is ``prefix``."""
        self.offset = offset
        self.stream_prefix = prefix
        self._v1 = None

    def v1_frame_for(self, deflate: PerMessageDeflate | None) -> bytes:
        """The frame to send to an ``asok-green.v1`` connection: the message in its envelope."""
        v1 = self._v1
        if v1 is None:
            if self.offset:
                text = envelopes.stream_envelope(self.stream_prefix, self.offset, self.opcode, self.payload)
            else:
                text = envelopes.plain_envelope(self.opcode, self.payload)
            v1 = self._v1 = Outgoing(OP_TEXT, text)
        return v1.frame_for(deflate)
