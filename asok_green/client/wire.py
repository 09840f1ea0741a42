"""What a server says on an ``asok-green.v1`` socket, decoded: messages and notices.

Every frame is one JSON text: a stream message ``{"s", "e", "o", "d" | "b"}``,
another message ``{"d" | "b"}``, or a notice ``{"asok": kind, "s", "e", "o", ...}``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Message", "Notice", "decode", "NOTICES"]

#: The notices this client acts on; a later version's others are ignored.
NOTICES = ("position", "resumed", "continuity_lost")


@dataclass(frozen=True)
class Message:
    """One message as the app sent it: ``data`` is ``str`` (text) or ``bytes`` (binary).

    ``stream``, ``epoch`` and ``offset`` say where it sits in a stream with
    history (None for a message of no stream).
    """

    data: str | bytes
    stream: str | None = None
    epoch: str | None = None
    offset: int | None = None


@dataclass(frozen=True)
class Notice:
    """A notice of the server about a stream: ``kind`` is ``position``, ``resumed`` or ``continuity_lost``."""

    kind: str
    stream: str
    epoch: str
    offset: int
    extra: dict[str, Any] = field(default_factory=dict)


def _payload(frame: dict) -> str | bytes | None:
    if isinstance(frame.get("b"), str):
        return base64.b64decode(frame["b"])
    data = frame.get("d")
    return data if isinstance(data, str) else None


def decode(text: str) -> Message | Notice | None:
    """One v1 frame; None for what this client does not understand (a frame to ignore)."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict):
        return None
    kind = frame.get("asok")
    if isinstance(kind, str):
        stream, epoch, offset = frame.get("s"), frame.get("e"), frame.get("o")
        if kind not in NOTICES or not isinstance(stream, str) or not isinstance(epoch, str) or type(offset) is not int:
            return None
        extra = {k: v for k, v in frame.items() if k not in ("asok", "s", "e", "o")}
        return Notice(kind, stream, epoch, offset, extra)
    data = _payload(frame)
    if data is None:
        return None
    stream = frame.get("s")
    if isinstance(stream, str):
        epoch, offset = frame.get("e"), frame.get("o")
        if not isinstance(epoch, str) or type(offset) is not int:
            return None
        return Message(data, stream, epoch, offset)
    return Message(data)
