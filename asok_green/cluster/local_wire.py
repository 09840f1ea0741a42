"""The frames two processes of a restart exchange on their local channel: encoded and read back, no I/O.

A frame is a JSON header and a payload of bytes (the broadcast's, or empty),
each preceded by its length (``!II``, header length then payload length).
Headers say what the frame is with ``k``:

* ``hello``: the sender's node ``id``, the ``store`` its history is kept in
  (a file path both processes can name, or null), and everything it holds:
  its ``users`` and ``rooms`` (``[room, user]`` pairs). First on every link.
* ``msg``: a broadcast to ``t`` (``path`` or ``room``) ``n`` with opcode
  ``op``; with ``s``, ``e`` and ``o`` when it was delivered with an offset
  (stream, epoch, offset).
* ``add`` / ``remove`` (``users``), ``join`` / ``leave`` (``rooms``): changes
  of what the sender holds.
"""

from __future__ import annotations

import json
import struct
from typing import Any

#: The two lengths in front of every frame: its header's, then its payload's.
FRAME_LENGTHS = struct.Struct("!II")

#: Most bytes of one header (a hello lists every user the process holds).
MAX_HEADER = 16 * 1024 * 1024
#: Most bytes of one broadcast carried across.
MAX_PAYLOAD = 64 * 1024 * 1024


class BadFrame(ValueError):
    """The peer sent something that is not a frame of this channel: the link is closed."""


def encode(header: dict, payload: bytes = b"") -> bytes:
    """One frame: the lengths, the JSON header, the payload."""
    head = json.dumps(header, separators=(",", ":"), default=str).encode("utf-8")
    return FRAME_LENGTHS.pack(len(head), len(payload)) + head + payload


def hello(node_id: str, store: str | None, users: list, rooms: list) -> bytes:
    """The first frame of a link: who the sender is and everything it holds."""
    return encode({"k": "hello", "id": node_id, "store": store, "users": users, "rooms": [list(p) for p in rooms]})


def broadcast(target: str, name: str, opcode: int, payload: bytes, stream: tuple[str, str, int] | None) -> bytes:
    """A broadcast delivered on the sender's side; ``stream`` is ``(stream, epoch, offset)`` if it had an offset."""
    header: dict[str, Any] = {"k": "msg", "t": target, "n": name, "op": opcode}
    if stream is not None:
        header["s"], header["e"], header["o"] = stream
    return encode(header, payload)


def holding(kind: str, items: list) -> bytes:
    """``add`` / ``remove`` of users, or ``join`` / ``leave`` of ``(room, user)`` pairs."""
    key = "users" if kind in ("add", "remove") else "rooms"
    return encode({"k": kind, key: [list(item) if isinstance(item, tuple) else item for item in items]})


def stream_of(prefix: bytes, offset: int) -> tuple[str, str, int] | None:
    """``(stream, epoch, offset)`` of a message whose v1 envelope starts with ``prefix``; None without one.

    The prefix is the start of the JSON object ``{"s": stream, "e": epoch, "o": ``
    (asok_green.protocol.envelopes.stream_prefix): closed with the offset, it reads back.
    """
    if not prefix or offset <= 0:
        return None
    try:
        envelope = json.loads(prefix + b"%d}" % offset)
    except ValueError:
        return None
    stream, epoch = envelope.get("s"), envelope.get("e")
    if not isinstance(stream, str) or not isinstance(epoch, str):
        return None
    return stream, epoch, offset


def is_user_id(item: Any) -> bool:
    """True for what a user id can be on the channel: a number or a string."""
    return isinstance(item, (int, str, float)) and not isinstance(item, bool)


def user_ids(raw: Any) -> list:
    """The user ids of a header's list, anything else skipped."""
    return [item for item in raw if is_user_id(item)] if isinstance(raw, list) else []


def room_users(raw: Any) -> list[tuple[str, Any]]:
    """The ``(room, user)`` pairs of a header's list, anything malformed skipped."""
    if not isinstance(raw, list):
        return []
    return [
        (item[0], item[1])
        for item in raw
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and is_user_id(item[1])
    ]


class FrameReader:
    """Cuts the bytes read from a link into ``(header, payload)`` frames."""

    def __init__(self) -> None:
        """Nothing read yet."""
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict, bytes]]:
        """The frames completed by ``data``; :class:`BadFrame` for anything else."""
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        while len(buffer) - start >= FRAME_LENGTHS.size:
            head_size, payload_size = FRAME_LENGTHS.unpack_from(buffer, start)
            if head_size > MAX_HEADER or payload_size > MAX_PAYLOAD:
                raise BadFrame(f"frame too large ({head_size} + {payload_size} bytes)")
            end = start + FRAME_LENGTHS.size + head_size + payload_size
            if len(buffer) < end:
                break
            head_end = start + FRAME_LENGTHS.size + head_size
            try:
                header = json.loads(bytes(buffer[start + FRAME_LENGTHS.size : head_end]))
            except ValueError:
                raise BadFrame("a header is not JSON") from None
            if not isinstance(header, dict) or not isinstance(header.get("k"), str):
                raise BadFrame("a header without a kind")
            frames.append((header, bytes(buffer[head_end:end])))
            start = end
        if start:
            del buffer[:start]
        return frames
