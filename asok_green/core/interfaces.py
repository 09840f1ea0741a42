"""What the hub's parts ask of each other, as small interfaces: the seams that keep imports pointing down.

:class:`ConnectionHub` is what a connection (asok_green.server.connection)
asks of the hub that holds it, so the connection need not import the hub.
:class:`StreamHistory` is what the hub (asok_green.server.hub) asks of the
streams that keep history (asok_green.history.streams), which sit a layer
above it and are handed to it as an attribute. Interfaces only: nothing here
runs.
"""

from __future__ import annotations

from typing import Any, Protocol

from .limits import Limits


class ConnectionHub(Protocol):
    """The hub as one of its connections sees it: limits, counters, rooms, the after-handler hook."""

    #: The limits every connection of the hub obeys (queue, message size, rates, timeouts).
    limits: Limits
    #: Counters of the hub (a ``collections.Counter``): messages, bytes, closes by cause.
    stats: Any
    #: Seconds spent in, and calls of, each handler function.
    handler_seconds: Any
    handler_calls: Any
    #: Timings kept while metrics are on (asok_green.ops.metrics.HubMetrics), else None.
    metrics: Any

    def join_room(self, conn: Any, room: str, since: Any = None) -> bool:
        """Put ``conn`` in ``room`` if the name is valid and the authorizer agrees."""

    def leave_room(self, conn: Any, room: str) -> None:
        """Take ``conn`` out of ``room``."""

    def rooms_of(self, conn: Any) -> frozenset[str]:
        """The rooms ``conn`` is in (for a closed one, those it was in when it closed)."""

    def after_handler(self) -> None:
        """Release what a handler left open in this greenlet."""


class StreamHistory(Protocol):
    """The streams that keep history, as the hub calls them around each broadcast.

    A stream is an opaque object of the history's; messages are the hub's
    encoded-once messages; connections are the hub's.
    """

    #: True when the store is shared by every node, which then delivers each message itself.
    distributes: bool

    def path_stream(self, path: str) -> Any:
        """The stream of ``path``, or None when its route keeps no history."""

    def room_stream(self, room: str) -> Any:
        """The stream of ``room``, or None when no pattern keeps its history."""

    def stream_named(self, name: str) -> Any:
        """The stream called ``name`` (``/path`` or ``room:name``)."""

    def publish(self, stream: Any, message: Any, exclude: Any) -> int:
        """Append ``message`` to ``stream`` and deliver it to its members; how many got it."""

    def deliver(self, stream: Any, epoch: str, offset: int, message: Any, exclude: Any) -> int:
        """Deliver message ``offset`` of ``stream``, published elsewhere; how many got it."""

    def attach(self, conn: Any, stream: Any, since: Any) -> None:
        """Tell ``conn`` its position in ``stream``, or give it what it missed since ``since`` (may yield)."""

    def keep(self, pattern: str, size: int, ttl: float | None) -> None:
        """Keep the history of the paths or rooms ``pattern`` names."""

    def start(self) -> None:
        """Open the store, once the process serves."""

    def stop(self) -> None:
        """Flush and close the store."""
