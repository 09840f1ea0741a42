"""The ``asok-green.v1`` subprotocol's JSON envelopes, and the resume positions clients send.

Pure functions over bytes and strings: the hub encodes each envelope once per
broadcast and hands the same bytes to every v1 connection.

* a stream message: ``{"s": stream, "e": epoch, "o": offset, "d": text}`` (``"b": base64`` for binary);
* any other app frame: ``{"d": text}`` / ``{"b": base64}``;
* the server's notices: ``{"asok": "position" | "resumed" | "continuity_lost", ...}``.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, NamedTuple

from .frames import OP_TEXT

#: The subprotocol a client offers to get envelopes, offsets and resume.
SUBPROTOCOL = "asok-green.v1"

#: The query parameter of a reconnecting client's last position on its path stream.
SINCE_PARAMETER = "asok_since"

#: Why a replay could not be whole (the ``reason`` of ``continuity_lost``).
HISTORY_EXCEEDED = "history_exceeded"
EPOCH_CHANGED = "epoch_changed"

_EPOCH_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OFFSET_PATTERN = re.compile(r"[0-9]{1,18}", re.ASCII)
_MAX_OFFSET = 2**62


class Since(NamedTuple):
    """A client's last position in a stream: the epoch and the last offset it has."""

    epoch: str
    offset: int


class BadSince(ValueError):
    """A resume position that is not ``<epoch>:<offset>`` (or ``{"e": epoch, "o": offset}``)."""


def _json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def _body(opcode: int, payload: bytes) -> bytes:
    """``"d": "<text>"`` or ``"b": "<base64>"`` for one message's payload."""
    if opcode == OP_TEXT:
        return b'"d":' + _json_string(payload.decode("utf-8", "replace"))
    return b'"b":"' + base64.b64encode(payload) + b'"'


def plain_envelope(opcode: int, payload: bytes) -> bytes:
    """The JSON text of an app frame that belongs to no stream: ``{"d": ...}`` or ``{"b": ...}``."""
    return b"{" + _body(opcode, payload) + b"}"


def stream_prefix(stream: str, epoch: str) -> bytes:
    """The start of every envelope of ``stream`` in ``epoch``: kept per stream, built once per epoch."""
    return b'{"s":' + _json_string(stream) + b',"e":' + _json_string(epoch) + b',"o":'


def stream_envelope(prefix: bytes, offset: int, opcode: int, payload: bytes) -> bytes:
    """The JSON text of message ``offset`` of a stream whose :func:`stream_prefix` is ``prefix``."""
    return b"%s%d,%s}" % (prefix, offset, _body(opcode, payload))


def notice(kind: str, stream: str, epoch: str, offset: int, **extra: Any) -> bytes:
    """A server notice (``position``, ``resumed``, ``continuity_lost``) about ``stream``."""
    return json.dumps({"asok": kind, "s": stream, "e": epoch, "o": offset, **extra}).encode("utf-8")


def parse_since_text(value: str) -> Since:
    """``<epoch>:<offset>`` as sent in ``?asok_since=``; raises :class:`BadSince`."""
    epoch, sep, offset = value.rpartition(":")
    # ASCII digits only: str.isdigit() also takes other scripts' digits (and int() reads them).
    if not sep or not _EPOCH_PATTERN.fullmatch(epoch) or not _OFFSET_PATTERN.fullmatch(offset):
        raise BadSince(f"{SINCE_PARAMETER} must be <epoch>:<offset>, got {value[:80]!r}")
    return Since(epoch, int(offset))


def parse_since_object(value: Any) -> Since:
    """``{"e": "<epoch>", "o": <offset>}`` as sent with ``join_room``; raises :class:`BadSince`."""
    if isinstance(value, dict):
        epoch, offset = value.get("e"), value.get("o")
        if (
            isinstance(epoch, str)
            and _EPOCH_PATTERN.fullmatch(epoch)
            and type(offset) is int
            and 0 <= offset < _MAX_OFFSET
        ):
            return Since(epoch, offset)
    raise BadSince('since must be {"e": "<epoch>", "o": <offset>}')


def since_from_query(query: str) -> Since | None:
    """The ``asok_since`` position in a query string, None when absent; raises :class:`BadSince`."""
    if SINCE_PARAMETER not in query:
        return None
    from urllib.parse import parse_qs

    values = parse_qs(query, keep_blank_values=True).get(SINCE_PARAMETER)
    if not values:
        return None
    if len(values) > 1:
        raise BadSince(f"{SINCE_PARAMETER} given more than once")
    return parse_since_text(values[0])
