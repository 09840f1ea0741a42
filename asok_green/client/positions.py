"""The client rule of ``asok-green.v1``: the last position of each stream, and what to do with what arrives.

Pure: no socket, no clock. Each method says what the client must do; the
same rule as the browser's resume client (``bridge/client_assets/resume.js``):

* a stream message whose offset is the last one + 1 (or of a stream seen for
  the first time) is delivered; one at or below the last is a duplicate,
  dropped; one above last + 1 is a gap: reconnect with ``asok_since`` and the
  server fills it; one of another epoch is delivered, continuity being lost;
* a ``position`` notice past the last offset means those messages are not
  coming (continuity lost), a ``resumed`` one past it means the replay stopped
  short (a gap: ask again), and ``continuity_lost`` says so itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

__all__ = ["Position", "Verdict", "StreamPositions", "ROOM_PREFIX"]

#: Streams of rooms are named ``room:<name>``; any other stream is a path's.
ROOM_PREFIX = "room:"


class Position(NamedTuple):
    """The last message a client has of a stream: its epoch and offset."""

    epoch: str
    offset: int

    def as_since(self) -> str:
        """``<epoch>:<offset>``, as ``?asok_since=`` takes it."""
        return f"{self.epoch}:{self.offset}"

    def as_object(self) -> dict[str, Any]:
        """``{"e": epoch, "o": offset}``, as ``join_room``'s ``since`` takes it."""
        return {"e": self.epoch, "o": self.offset}


class Verdict(enum.Enum):
    """What the client does with a stream message or a notice."""

    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"
    #: Deliver, and report that continuity was lost (a new epoch, or a position past ours).
    LOST = "lost"
    OK = "ok"


class StreamPositions:
    """The last position of each stream a client has seen; :meth:`accept` and :meth:`notice` apply the rule."""

    def __init__(self, saved: Mapping[str, Any] | None = None) -> None:
        """Start from ``saved`` (``{stream: {"e": epoch, "o": offset}}`` or ``{stream: (epoch, offset)}``)."""
        self._streams: dict[str, Position] = {}
        for stream, value in (saved or {}).items():
            position = _position_of(value)
            if isinstance(stream, str) and position is not None:
                self._streams[stream] = position

    def get(self, stream: str) -> Position | None:
        """The last position of ``stream``, or None."""
        return self._streams.get(stream)

    def forget(self, stream: str) -> None:
        """Forget ``stream`` (a room left: joining it again later starts from its present)."""
        self._streams.pop(stream, None)

    def accept(self, stream: str, epoch: str, offset: int) -> Verdict:
        """A stream message arrived: DELIVER, DUPLICATE, GAP, or LOST (a new epoch: deliver it too)."""
        known = self._streams.get(stream)
        if known is None:
            self._streams[stream] = Position(epoch, offset)
            return Verdict.DELIVER
        if known.epoch != epoch:
            self._streams[stream] = Position(epoch, offset)
            return Verdict.LOST
        if offset <= known.offset:
            return Verdict.DUPLICATE
        if offset > known.offset + 1:
            return Verdict.GAP
        self._streams[stream] = Position(epoch, offset)
        return Verdict.DELIVER

    def notice(self, kind: str, stream: str, epoch: str, offset: int) -> Verdict:
        """A notice (``position``, ``resumed``, ``continuity_lost``) about ``stream``: OK, LOST or GAP."""
        known = self._streams.get(stream)
        if kind == "continuity_lost":
            self._streams[stream] = Position(epoch, offset)
            return Verdict.LOST
        if known is None:
            self._streams[stream] = Position(epoch, offset)
            return Verdict.OK
        if known.epoch != epoch:
            self._streams[stream] = Position(epoch, offset)
            return Verdict.LOST
        if offset > known.offset:
            if kind == "resumed":
                return Verdict.GAP  # the replay stopped short of what the server has: ask again
            self._streams[stream] = Position(epoch, offset)
            return Verdict.LOST  # a position past ours, without a replay: those messages are not coming
        return Verdict.OK

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The positions as ``{stream: {"e": epoch, "o": offset}}`` (JSON, to save and pass back later)."""
        return {stream: position.as_object() for stream, position in self._streams.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)


def _position_of(value: Any) -> Position | None:
    if isinstance(value, Mapping):
        value = (value.get("e"), value.get("o"))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        epoch, offset = value
        if isinstance(epoch, str) and type(offset) is int and offset >= 0:
            return Position(epoch, offset)
    return None
