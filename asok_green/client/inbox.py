"""What a resume client does with each decoded frame: the rule applied, the messages waiting to be read.

No socket here: :meth:`Inbox.take` files a message or a notice and says
whether the link must be dropped and made again at once (a gap, or a replay
that stopped short); :meth:`Inbox.pop` hands out what waits, raising
:class:`~asok_green.client.errors.ContinuityLost` where messages were lost
(unless a callback takes it).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from .errors import ContinuityLost
from .positions import ROOM_PREFIX, StreamPositions, Verdict
from .wire import Message, Notice

__all__ = ["Inbox"]


class Inbox:
    """The positions, counters and waiting messages of one resume client."""

    def __init__(
        self,
        positions: StreamPositions,
        stats: Counter,
        on_lost: Callable[[ContinuityLost], None] | None = None,
        on_event: Callable[[str, dict], None] | None = None,
    ) -> None:
        """Apply the rule with ``positions``, count in ``stats``; ``on_lost`` instead of raising."""
        self.positions = positions
        self.stats = stats
        self._on_lost = on_lost
        self._on_event = on_event
        #: The stream of the client's path, once known (from saved positions or the server).
        self.path_stream: str | None = next((s for s in positions if not s.startswith(ROOM_PREFIX)), None)
        #: The server said where the path's stream stands on this link (a notice or a message of it).
        self.told = False
        self._waiting: deque[Message | ContinuityLost] = deque()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def pop(self) -> Message:
        """The next message; raises the :class:`ContinuityLost` that comes before it, if any."""
        item = self._waiting.popleft()
        if isinstance(item, ContinuityLost):
            raise item
        return item

    def take(self, item: Message | Notice | None) -> bool:
        """File a decoded frame; True when the link must be made again at once (the server fills a gap)."""
        if isinstance(item, Notice):
            return self._notice(item)
        if isinstance(item, Message):
            if item.stream is None:
                self._deliver(item)
                return False
            return self._stream_message(item)
        return False

    def _learn(self, stream: str) -> None:
        if not stream.startswith(ROOM_PREFIX):
            self.path_stream = stream
            self.told = True

    def _stream_message(self, message: Message) -> bool:
        self._learn(message.stream)
        verdict = self.positions.accept(message.stream, message.epoch, message.offset)
        if verdict is Verdict.DUPLICATE:
            self.stats["duplicates"] += 1
            return False
        if verdict is Verdict.GAP:
            self.stats["gaps"] += 1
            return True
        if verdict is Verdict.LOST:
            self._lost(message.stream, message.epoch, message.offset, "epoch_changed")
        self._deliver(message)
        return False

    def _notice(self, notice: Notice) -> bool:
        self._learn(notice.stream)
        verdict = self.positions.notice(notice.kind, notice.stream, notice.epoch, notice.offset)
        if verdict is Verdict.GAP:
            self.stats["gaps"] += 1
            return True
        if verdict is Verdict.LOST:
            self._lost(notice.stream, notice.epoch, notice.offset, notice.extra.get("reason") or "position_changed")
        if notice.kind == "resumed":
            replayed = notice.extra.get("replayed") or 0
            self.stats["replayed"] += replayed
            detail = {"stream": notice.stream, "epoch": notice.epoch, "offset": notice.offset, "replayed": replayed}
            self.event("resumed", detail)
        return False

    def _deliver(self, message: Message) -> None:
        self.stats["delivered"] += 1
        self._waiting.append(message)

    def _lost(self, stream: str, epoch: str, offset: int, reason: str) -> None:
        self.stats["continuity_lost"] += 1
        error = ContinuityLost(stream, epoch, offset, reason)
        if self._on_lost is not None:
            self._on_lost(error)
        else:
            self._waiting.append(error)

    def event(self, kind: str, detail: dict[str, Any]) -> None:
        """Tell ``on_event`` (if any) about ``kind``."""
        if self._on_event is not None:
            self._on_event(kind, detail)
