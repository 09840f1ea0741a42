"""What the hub asks of the layers above it, as small interfaces: the seams that keep imports pointing down.

:class:`StreamHistory` is what the hub (asok_green.server.hub) asks of the
streams that keep history (asok_green.history.streams), which sit a layer
above it and are handed to it as an attribute (the cluster node's interface
is :class:`asok_green.core.node.Node`). Interfaces only: nothing here runs.
"""

from __future__ import annotations

from typing import Any, Protocol


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

    def closed(self, conn: Any) -> None:
        """``conn`` closed: the streams of its path and rooms may go, if no connection here is left in them."""

    def room_vacated(self, room: str) -> None:
        """``room`` may have no connection of this process left in it: its stream may go."""

    def attach(self, conn: Any, stream: Any, since: Any) -> None:
        """Tell ``conn`` its position in ``stream``, or give it what it missed since ``since`` (may yield)."""

    def keep(self, pattern: str, size: int, ttl: float | None) -> None:
        """Keep the history of the paths or rooms ``pattern`` names."""

    def start(self) -> None:
        """Open the store, once the process serves."""

    def stop(self) -> None:
        """Flush and close the store."""
