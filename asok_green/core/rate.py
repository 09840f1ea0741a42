"""The message-rate limit: a token bucket, driven by the time its caller passes in."""

from __future__ import annotations

from time import monotonic
from typing import Any

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` events a second on average, ``burst`` at once: the message-rate limit."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        """A full bucket at time ``now``."""
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    @classmethod
    def for_limits(cls, limits: Any) -> TokenBucket | None:
        """The bucket ``limits`` ask for (full now), or None when messages are not rate-limited."""
        rate = limits.max_messages_per_second
        if rate <= 0:
            return None
        return cls(rate, limits.message_burst or max(1.0, rate), monotonic())

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
