"""The JSON operators of ``/asok/live``: rooms, presence, typing, receipts, live components.

Message shapes follow Asok's documentation to the letter. Live components
(``join`` / ``call`` / ``sync`` / ``leave``) are handed to the installed Asok's own
handlers, which work on any object with Asok's connection interface.

One extension: ``{"op": "get_presence", "room": R}`` answers with the users in
``R`` (for members of ``R``), and the hub announces ``room_presence`` changes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..core.logs import limiter
from ..protocol.outgoing import Outgoing
from . import asok_api

if TYPE_CHECKING:
    from ..server.connection import Connection
    from ..server.hub import Hub

logger = logging.getLogger("asok_green")

_MAX_OP_LENGTH = 50
_JOIN_ERROR = "Unauthorized or invalid room join request for {room}"
_NOT_A_MEMBER = "Join room {room} before asking who is in it"
_ROOM_CAP_ERROR = "Too many rooms: a connection may be in {cap} rooms at once; leave one before joining {room}"

#: A JSON string (skipped whole) or one bracket: what the nesting depth is counted from. A string
#: left open runs to the end (its closing quote is optional), so no text is scanned twice.
_NESTING_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def nesting_depth(text: str, limit: int) -> int:
    """How deep arrays and objects nest in the JSON ``text``, counted up to ``limit + 1`` at most."""
    depth = deepest = 0
    for token in _NESTING_TOKEN.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif char in "]}":
            depth -= 1
    return deepest


def read_op(text: str, limits: Any) -> tuple[Any, str | None]:
    """The JSON value of ``text``, or ``(None, why not)``: too long, nested too deep, or not JSON."""
    most = limits.max_op_bytes
    # Characters first (each is 1 to 4 bytes in UTF-8): only a text near the limit is encoded to count.
    if len(text) > most or (len(text) * 4 > most and len(text.encode("utf-8", "surrogatepass")) > most):
        return None, f"message too long: at most {most} bytes"
    depth = limits.max_op_depth
    # Fewer brackets than the limit cannot nest deeper than it: most messages are not scanned.
    if text.count("[") + text.count("{") > depth and nesting_depth(text, depth) > depth:
        return None, f"JSON nested too deep: at most {depth} levels"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return None, "invalid JSON"


def on_live_message(conn: Connection, text: Any) -> None:
    """Handle one message on ``/asok/live``; bad input gets ``{"op": "error"}``, never a crash."""
    if not isinstance(text, str):
        conn.send_json({"op": "error", "message": "binary messages are not supported on /asok/live"})
        return
    data, error = read_op(text, conn.server.limits)
    if error is not None:
        conn.send_json({"op": "error", "message": error})
        return
    op = data.get("op") if isinstance(data, dict) else None
    if not isinstance(op, str) or len(op) > _MAX_OP_LENGTH:
        conn.send_json({"op": "error", "message": 'a message needs an "op" string'})
        return
    if op in _ASOK_LIVE_OPS:
        _live_component(conn, data, text)
        return
    handler = _OPERATORS.get(op)
    if handler is None:
        conn.send_json({"op": "error", "message": f"unknown op: {op}"})
        return
    handler(conn.server, conn, data)


def _join_room(server: Hub, conn: Connection, data: dict) -> None:
    room = data.get("room")
    since = None
    if data.get("since") is not None:
        from ..protocol.envelopes import BadSince, parse_since_object

        try:
            since = parse_since_object(data["since"])
        except BadSince as exc:
            conn.send_json(_room_error(room, str(exc)))
            return
    cap = server.limits.max_rooms_per_connection
    if isinstance(room, str) and server.state.at_room_cap(conn, room, cap):
        conn.send_json(_room_error(room, _ROOM_CAP_ERROR.format(cap=cap, room=room)))
        return
    if isinstance(room, str) and _model_room_allowed(conn, room) and server.join_room(conn, room, since):
        return
    conn.send_json(_room_error(room, _JOIN_ERROR.format(room=room)))


def _room_error(room: Any, message: str) -> dict:
    """The doc's error payload for a refused room request."""
    return {"op": "broadcast", "type": "error", "room": room, "message": message}


def _model_room_allowed(conn: Connection, room: str) -> bool:
    """``model:`` rooms are checked against the user's own rows, as Asok does."""
    if not room.startswith("model:"):
        return True
    return asok_api.model_room_allowed(conn, room)


def _leave_room(server: Hub, conn: Connection, data: dict) -> None:
    room = data.get("room")
    if isinstance(room, str):
        conn.leave(room)


def _get_presence(server: Hub, conn: Connection, data: dict) -> None:
    room = data.get("room")
    if room is None:
        conn.send_json({"op": "broadcast", "type": "presence_list", "users": server.get_online_users()})
    elif _is_member(conn, room):
        users = server.get_room_users(room)
        conn.send_json({"op": "broadcast", "type": "presence_list", "room": room, "users": users})
    else:
        conn.send_json(_room_error(room, _NOT_A_MEMBER.format(room=room)))


def _typing(server: Hub, conn: Connection, data: dict) -> None:
    user_id = getattr(conn.user, "id", None)
    _relay_to_room(server, conn, data.get("room"), "typing", {"user_id": user_id, "typing": bool(data.get("typing"))})


def _receipt(server: Hub, conn: Connection, data: dict) -> None:
    fields = {
        "message_id": data.get("message_id"),
        "user_id": getattr(conn.user, "id", None),
        "status": data.get("status", "read"),
    }
    _relay_to_room(server, conn, data.get("room"), "receipt", fields)


def _relay_to_room(server: Hub, conn: Connection, room: Any, kind: str, fields: dict) -> None:
    """Signal ``kind`` to the other members of ``room``, if the sender is one of them (live only: no history)."""
    if _is_member(conn, room):
        server.signal_room(room, Outgoing.json({"op": "broadcast", "type": kind, "room": room, **fields}), conn)


def _is_member(conn: Connection, room: Any) -> bool:
    return isinstance(room, str) and room in conn.rooms


_OPERATORS: dict[str, Callable] = {
    "join_room": _join_room,
    "leave_room": _leave_room,
    "get_presence": _get_presence,
    "typing": _typing,
    "receipt": _receipt,
}

#: Live-component operators served by the installed Asok's own handlers.
_ASOK_LIVE_OPS = ("join", "call", "sync", "leave")


def _live_component(conn: Connection, data: dict, text: str) -> None:
    """Hand a live-component message to Asok, which answers its own errors with ``{"op": "error"}``."""
    cid = data.get("cid")
    if cid is not None and not (isinstance(cid, str) and len(cid) <= 100):
        conn.send_json({"op": "error", "message": "invalid component id"})
        return
    if data["op"] in ("call", "sync") and not asok_api.live_component_joined(conn, cid):
        # Asok would raise, and log the error with its traceback, for every such message.
        conn.send_json({"op": "error", "cid": cid, "message": "unknown component: join it first"})
        return
    asok_api.run_live_component_message(conn.server, conn, text)


class AsokLinesLimited(logging.Filter):
    """Holds the lines Asok's live-component handler writes (a client can make it write) to the log rate limit."""

    def __init__(self, limits: Any) -> None:
        """Lines of warning level and above, ``limits.log_burst`` per ``limits.log_interval`` seconds."""
        super().__init__()
        self.limits = limits

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a line over the rate; the first one past a window says how many were held back."""
        if record.levelno < logging.WARNING:
            return True
        limits = self.limits
        allowed, suppressed = limiter.allow("asok live", monotonic(), limits.log_burst, limits.log_interval)
        if suppressed:
            logger.warning(
                "suppressed %d similar lines (asok live) in the last %.0fs",
                suppressed,
                limits.log_interval,
                extra={"event": "log_suppressed", "kind": "asok live", "suppressed": suppressed},
            )
        return allowed


def limit_asok_lines(server: Hub) -> None:
    """Hold the lines of Asok's live-component handler to ``server``'s log rate limit (once per process)."""
    asok_logger = asok_api.live_logger()
    if not any(isinstance(f, AsokLinesLimited) for f in asok_logger.filters):
        asok_logger.addFilter(AsokLinesLimited(server.limits))


_RELAYED: set[int] = set()


def install_model_relay(server: Hub) -> None:
    """Relay Asok's model events to the ``model:<Name>`` and ``model:<Name>:<id>`` rooms."""
    if id(server) in _RELAYED:
        return
    _RELAYED.add(id(server))
    from ..server.offload import call_on_loop

    def announce(name: str, obj_id: Any, message: dict) -> None:
        server.broadcast_to_json(f"model:{name}", message)
        if obj_id:
            server.broadcast_to_json(f"model:{name}:{obj_id}", message)

    def relay(event: str) -> Callable[[Any], None]:
        def send(obj: Any) -> None:
            name = type(obj).__name__
            obj_id = getattr(obj, "id", None)
            message = {"op": "model_event", "event": event, "model": name, "id": obj_id}
            # A save inside asok_green.blocking fires this in a worker thread: the hub is the loop's alone.
            call_on_loop(announce, name, obj_id, message)

        return send

    for event in ("created", "updated", "deleted"):
        asok_api.on_model_event(f"model:{event}", relay(event))
