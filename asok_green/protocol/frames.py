"""Sans-I/O codec for RFC 6455 WebSocket frames, server side.

:class:`MessageReader` turns the bytes a client sends (masked frames) into
events; :func:`encode_frame` and :func:`encode_close` turn values into the
bytes a server sends (unmasked frames). Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import struct
from dataclasses import dataclass

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_NO_STATUS",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "Event",
    "Message",
    "MessageReader",
    "Ping",
    "Pong",
    "ProtocolError",
    "accept_key",
    "control_frames_length",
    "encode_close",
    "encode_frame",
    "is_valid_client_key",
    "is_valid_close_code",
]

# Opcodes (RFC 6455 section 5.2).
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005  # never on the wire: "the close frame had no code"
CLOSE_ABNORMAL = 1006  # never on the wire: "the connection dropped"
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN = 1013

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
_MAX_CONTROL_PAYLOAD = 125
_MAX_CLOSE_REASON = _MAX_CONTROL_PAYLOAD - 2

_HEADER_SHORT = struct.Struct("!BB")
_HEADER_MEDIUM = struct.Struct("!BBH")
_HEADER_LONG = struct.Struct("!BBQ")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class ProtocolError(Exception):
    """The peer broke the protocol.

    ``code`` is the close code to send back (1002, 1007 or 1009) and
    ``reason`` a short text suitable for the close frame. ``events`` holds
    what :meth:`MessageReader.feed` completed before the error, in order:
    the caller should handle them before failing the connection.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} ({code})")
        self.code = code
        self.reason = reason
        self.events: list[Event] = []


@dataclass(slots=True)
class Message:
    """A complete data message.

    ``data`` is ``str`` for ``OP_TEXT`` and ``bytes`` for ``OP_BINARY``.
    ``compressed`` is the RSV1 bit of the first frame; it can only be true
    when the reader was built with ``allow_rsv1=True``, and then ``data`` is
    the raw (still compressed, not UTF-8 checked) payload as ``bytes`` even
    for ``OP_TEXT``: the extension must inflate and decode it.
    """

    opcode: int
    data: str | bytes
    compressed: bool = False


@dataclass(slots=True)
class Ping:
    """A ping control frame; answer with a pong carrying the same payload."""

    payload: bytes


@dataclass(slots=True)
class Pong:
    """A pong control frame."""

    payload: bytes


@dataclass(slots=True)
class Close:
    """A close control frame; ``code`` is None when it had no payload."""

    code: int | None
    reason: str


Event = Message | Ping | Pong | Close
"""Anything :meth:`MessageReader.feed` returns."""


class MessageReader:
    """Turns the bytes a client sends into events.

    Feed it whatever the socket returned, in any split; it keeps only the
    unconsumed tail. Data messages larger than ``max_message_size`` bytes
    (counted over all fragments, before any decompression) are refused with
    close code 1009 as soon as a frame header announces them. Each frame of a
    fragmented message also counts its header toward that limit, so a stream
    of empty continuation frames ends in 1009 too.

    ``allow_rsv1`` accepts the RSV1 bit on the first frame of a data message,
    for when permessage-deflate has been negotiated; see :class:`Message`.

    After a :class:`Close` event or a :class:`ProtocolError`, the reader is
    finished and :meth:`feed` ignores its input.
    """

    __slots__ = (
        "_buf",
        "_checked",
        "_checker",
        "_compressed",
        "_decoder",
        "_done",
        "_need",
        "_opcode",
        "_payload",
        "_size",
        "allow_rsv1",
        "max_message_size",
    )

    def __init__(self, max_message_size: int = 1 << 20, allow_rsv1: bool = False) -> None:
        self.max_message_size = max_message_size
        self.allow_rsv1 = allow_rsv1
        self._buf = bytearray()
        # Bytes the buffer must hold before parsing is worth trying again, so
        # a large frame arriving in small pieces is parsed once, not per piece.
        self._need = 2
        self._done = False
        # The fragmented data message in progress, if any.
        self._opcode: int | None = None
        self._compressed = False
        # Its payload so far, as one buffer: memory follows the bytes, not the fragment count.
        self._payload = bytearray()
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        # UTF-8 check of a text frame still arriving: how many of its payload
        # bytes have been checked, and the decoder that checked them.
        self._checked = 0
        self._checker: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data``; return every event now complete.

        Raises :class:`ProtocolError` when the client breaks the protocol;
        the events completed earlier in the same call are its ``events``.
        """
        if self._done:
            return []
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []
        events: list[Event] = []
        try:
            self._parse(events)
        except ProtocolError as exc:
            self._finish()
            exc.events = events
            raise
        return events

    def _parse(self, events: list[Event]) -> None:
        """Append to ``events`` every event the buffer completes."""
        buf = self._buf
        end = len(buf)
        pos = 0
        while True:
            avail = end - pos
            if avail < 2:
                need = 2
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            self._check_first_bytes(b0, b1)
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if length == 126:
                header_len = 2 + 2 + 4
            elif length == 127:
                header_len = 2 + 8 + 4
            else:
                header_len = 2 + 4
            if avail < header_len:
                need = header_len
                break
            if length == 126:
                (length,) = _U16.unpack_from(buf, pos + 2)
            elif length == 127:
                (length,) = _U64.unpack_from(buf, pos + 2)
                if length >> 63:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "frame length has top bit set")
            if opcode < OP_CLOSE:
                # A fragment of a message also pays for its header, so that
                # empty fragments cannot pile up under the size limit.
                charge = length if b0 & 0x80 and opcode != OP_CONT else length + header_len
                if self._size + charge > self.max_message_size:
                    raise ProtocolError(CLOSE_TOO_BIG, "message too big")
            if avail < header_len + length:
                need = header_len + length
                if avail > header_len + self._checked and self._is_plain_text(b0, opcode):
                    self._check_partial_text(buf, pos + header_len, end, opcode)
                    # Come back with the next bytes, not the whole frame.
                    need = avail + 1
                break

            if self._checker is not None:
                self._checker = None
                self._checked = 0
            start = pos + header_len
            pos = start + length
            payload = _unmask(buf, start, pos, bytes(buf[start - 4 : start]))
            event = self._on_frame(b0 & 0x80, b0 & 0x40, opcode, payload, header_len)
            if event is not None:
                events.append(event)
                if type(event) is Close:
                    self._finish()
                    return

        del buf[:pos]
        self._need = need

    def _check_first_bytes(self, b0: int, b1: int) -> None:
        """Apply every rule that the first two bytes of a frame decide."""
        opcode = b0 & 0x0F
        if not b1 & 0x80:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frame not masked")
        rsv = b0 & 0x70
        # The only place RSV bits are judged: RSV1 may mark the first frame
        # of a compressed message once an extension allows it (RFC 7692).
        if rsv and not (rsv == 0x40 and self.allow_rsv1 and opcode in _DATA_OPCODES):
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if opcode in _CONTROL_OPCODES:
            if not b0 & 0x80:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if b1 & 0x7F > _MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frame too long")
        elif opcode == OP_CONT:
            if self._opcode is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
        elif opcode in _DATA_OPCODES:
            if self._opcode is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
        else:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")

    def _is_plain_text(self, b0: int, opcode: int) -> bool:
        """Whether a frame carries uncompressed text of a message (whose UTF-8 can be checked early)."""
        if b0 & 0x40:
            return False
        return opcode == OP_TEXT or (opcode == OP_CONT and self._decoder is not None)

    def _check_partial_text(self, buf: bytearray, start: int, end: int, opcode: int) -> None:
        """Check the UTF-8 of the part of a text frame received so far, past what was checked.

        A message with invalid UTF-8 is refused as soon as the bad bytes
        arrive, even in the middle of a large frame.
        """
        checker = self._checker
        if checker is None:
            checker = self._checker = _utf8_decoder()
            if opcode == OP_CONT:
                # Carry over a character split by the previous fragment.
                checker.setstate(self._decoder.getstate())
        done = self._checked
        mask = bytes(buf[start - 4 : start])
        shift = done & 3
        chunk = _unmask(buf, start + done, end, mask[shift:] + mask[:shift])
        try:
            checker.decode(chunk, False)
        except UnicodeDecodeError:
            raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in text message") from None
        self._checked = end - start

    def _on_frame(self, fin: int, rsv1: int, opcode: int, payload: bytes, header_len: int) -> Event | None:
        """Turn one checked, unmasked frame into an event, or None mid-message."""
        if opcode >= OP_CLOSE:
            if opcode == OP_PING:
                return Ping(payload)
            if opcode == OP_PONG:
                return Pong(payload)
            return _parse_close(payload)

        if opcode != OP_CONT:
            if fin:
                # Unfragmented message: the common case, no state to keep.
                if opcode == OP_TEXT and not rsv1:
                    return Message(OP_TEXT, _decode_text(payload))
                return Message(opcode, payload, bool(rsv1))
            self._opcode = opcode
            self._compressed = bool(rsv1)
            if opcode == OP_TEXT and not rsv1:
                self._decoder = _utf8_decoder()

        self._size += len(payload) + header_len
        if self._decoder is not None:
            # Checking per fragment fails fast on the fragment that holds an
            # invalid sequence; final=fin catches a message ending mid-character.
            try:
                self._decoder.decode(payload, bool(fin))
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in text message") from None
        self._payload += payload
        if not fin:
            return None

        whole = self._payload
        data: str | bytes = whole.decode("utf-8") if self._decoder is not None else bytes(whole)
        message = Message(self._opcode, data, self._compressed)
        self._opcode = None
        self._compressed = False
        self._payload = bytearray()
        self._size = 0
        self._decoder = None
        return message

    @property
    def at_rest(self) -> bool:
        """True between two messages (no frame begun, no fragments held, not done): as good as a new reader."""
        return not self._buf and self._opcode is None and not self._done

    @property
    def done(self) -> bool:
        """True once the reader ignores its input (after a close frame, an error or :meth:`stop`)."""
        return self._done

    def stop(self) -> None:
        """Ignore every byte fed from now on, and drop what is buffered.

        For a connection the server has failed: RFC 6455 section 7.1.7 asks
        it not to process anything more from that peer.
        """
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._buf = bytearray()
        self._payload = bytearray()


def _unmask(buf: bytearray, start: int, stop: int, mask: bytes) -> bytes:
    """Return buf[start:stop] XORed with the repeated 4-byte mask."""
    # One big-integer XOR instead of a Python loop over the bytes.
    n = stop - start
    key = int.from_bytes(mask * (n >> 2) + mask[: n & 3], "little")
    value = int.from_bytes(buf[start:stop], "little")
    return (value ^ key).to_bytes(n, "little")


def _decode_text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in text message") from None


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame payload of one byte")
    (code,) = _U16.unpack_from(payload)
    if not is_valid_close_code(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in close reason") from None
    return Close(code, reason)


def control_frames_length(data: bytes, pings: bool = True) -> int:
    """Bytes at the start of ``data`` that are whole ping (with ``pings``) and pong frames from a client.

    Only frames a :class:`MessageReader` at rest takes as they are count (final,
    no reserved bits, masked, at most 125 bytes of payload).
    """
    first = (0x80 | OP_PING, 0x80 | OP_PONG) if pings else (0x80 | OP_PONG,)
    pos, end = 0, len(data)
    while end - pos >= 6:
        b0, b1 = data[pos], data[pos + 1]
        if b0 not in first or not b1 & 0x80:
            break
        length = b1 & 0x7F
        if length > _MAX_CONTROL_PAYLOAD or end - pos < 6 + length:
            break
        pos += 6 + length
    return pos


def encode_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked server frame (header + payload) as a single bytes object.

    Raises ValueError for a control frame that is fragmented or whose payload
    exceeds 125 bytes, which no peer would accept.
    """
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if opcode >= OP_CLOSE and (n > _MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames must be final and carry at most 125 bytes")
    if n < 126:
        header = _HEADER_SHORT.pack(b0, n)
    elif n < 1 << 16:
        header = _HEADER_MEDIUM.pack(b0, 126, n)
    else:
        header = _HEADER_LONG.pack(b0, 127, n)
    return header + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """The payload of a close frame.

    The reason is truncated to 123 UTF-8 bytes without splitting a character,
    so the payload fits the 125-byte limit of control frames.
    """
    data = reason.encode("utf-8")
    if len(data) > _MAX_CLOSE_REASON:
        # A cut inside a character leaves only an incomplete tail to drop.
        data = data[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(code) + data


def is_valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame.

    Accepts 1000-1003, 1007-1014 and 3000-4999; 1004 is reserved, 1005,
    1006 and 1015 are for local use only, the rest is unassigned.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def accept_key(sec_websocket_key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1((sec_websocket_key + _GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def is_valid_client_key(key: str) -> bool:
    """Whether ``key`` is base64 that decodes to exactly 16 bytes."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False
