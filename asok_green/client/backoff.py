"""Reconnect delays: exponential backoff with full jitter.

The n-th retry waits a random time in ``[0, min(cap, base * 2**n))`` seconds, so
clients dropped together by one restart do not come back together; a link that
stayed up ``stable_after`` seconds starts the count again.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

__all__ = ["Backoff", "full_jitter"]


def full_jitter(attempt: int, base: float, cap: float, random: Callable[[], float] = _random.random) -> float:
    """A random wait in ``[0, min(cap, base * 2**attempt))`` seconds."""
    return random() * min(cap, base * 2 ** min(attempt, 30))


class Backoff:
    """The delays of one client's reconnects."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 10.0,
        stable_after: float = 5.0,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """``base`` and ``cap`` in seconds; a link up ``stable_after`` seconds resets the count."""
        self.base = base
        self.cap = cap
        self.stable_after = stable_after
        self.random = random
        #: Retries since the last stable link.
        self.attempt = 0

    def next_delay(self, link_lasted: float | None) -> float:
        """The wait before the next attempt, after a link that lasted ``link_lasted`` seconds (None: never opened)."""
        if link_lasted is not None and link_lasted >= self.stable_after:
            self.attempt = 0
        delay = full_jitter(self.attempt, self.base, self.cap, self.random)
        self.attempt += 1
        return delay
