"""What the resume client raises: lost continuity, a client closed for good, a refused handshake."""

from __future__ import annotations

__all__ = ["ContinuityLost", "ClientClosed", "HandshakeFailed"]


class ContinuityLost(Exception):
    """Messages of ``stream`` were lost for good: the server could not replay them.

    ``reason`` is ``history_exceeded`` (the history no longer reaches back),
    ``epoch_changed`` (the stream started again: the store was emptied or lost)
    or ``position_changed`` (the server named a position past ours without
    replaying). ``epoch`` and ``offset`` are the position the client goes on from.
    """

    def __init__(self, stream: str, epoch: str, offset: int, reason: str) -> None:
        super().__init__(f"continuity lost on {stream} ({reason}): going on from {epoch}:{offset}")
        self.stream = stream
        self.epoch = epoch
        self.offset = offset
        self.reason = reason


class ClientClosed(Exception):
    """The client is closed: by :meth:`ResumingClient.close`, or by the server with a final ``code``."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class HandshakeFailed(Exception):
    """The server refused the WebSocket with an HTTP status that retrying will not change (a 4xx)."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(f"the server refused the WebSocket: HTTP {status} {body[:200]!r}")
        self.status = status
        self.body = body
