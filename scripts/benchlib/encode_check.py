"""Does asok_green serialise a JSON broadcast once, whatever the audience? Counted, not assumed."""

from __future__ import annotations

import json


class _Recipient:
    """Just enough of a connection for the hub to broadcast to it."""

    def __init__(self, path: str):
        self.path = path
        self.user = None
        self.closed = False
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def __getattr__(self, name: str):
        # Anything else the hub asks a connection (rooms, compression, live state) is unset.
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def check(recipients: int = 100) -> dict:
    """Broadcast one JSON object to ``recipients`` registered connections; count the encodings."""
    try:
        from asok_green import WebSocketServer
    except ImportError as exc:
        return {"error": f"asok_green not importable: {exc}"}
    calls = [0]
    original = json.dumps

    def counting_dumps(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    try:
        hub = WebSocketServer()
        members = [_Recipient("/room") for _ in range(recipients)]
        for conn in members:
            hub.register(conn)
        json.dumps = counting_dumps
        try:
            hub.broadcast_json("/room", {"seq": 1, "data": "x" * 128})
        finally:
            json.dumps = original
    except Exception as exc:  # the hub's internals move; report instead of failing the bench
        return {"error": repr(exc)}
    frames = [frame for conn in members for frame in conn.frames]
    return {
        "recipients": recipients,
        "delivered": len(frames),
        "dumps_calls": calls[0],
        "distinct_frames": len({id(frame) for frame in frames}),
    }
