"""Durations counted into fixed buckets, and the time each handler function takes.

Pure counters, no clock of their own: the caller measures, these count. The hub
keeps one :class:`HandlerTimes` (``hub.handler_times``); each call of an
on_message, on_connect or on_disconnect handler is counted into it once, and
both the live dashboard and the Prometheus metrics read it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

#: Upper bounds (seconds) of the handler-time and fan-out-time buckets.
TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Timing:
    """Durations counted into fixed buckets, as a Prometheus histogram holds them."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        """No observation yet; ``bounds`` are the buckets' upper bounds, ascending."""
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        """How many durations were counted."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class HandlerTimes:
    """Handler function -> the :class:`Timing` of its calls: the one count of time spent in handlers."""

    __slots__ = ("_timings",)

    def __init__(self) -> None:
        """No call counted yet."""
        self._timings: dict[Callable, Timing] = {}

    def handled(self, handler: Callable, seconds: float) -> None:
        """Count one call of ``handler`` that took ``seconds``."""
        timing = self._timings.get(handler)
        if timing is None:
            timing = self._timings[handler] = Timing()
        # Timing.observe, inlined: this runs once per message.
        timing.counts[bisect_left(timing.bounds, seconds)] += 1
        timing.total += seconds

    def get(self, handler: Callable) -> Timing | None:
        """The timing of ``handler``'s calls, or None if it was never called."""
        return self._timings.get(handler)

    def calls(self, handler: Callable) -> int:
        """How many calls of ``handler`` were counted."""
        timing = self._timings.get(handler)
        return timing.count if timing is not None else 0

    def seconds(self, handler: Callable) -> float:
        """The seconds spent in ``handler``, every call together."""
        timing = self._timings.get(handler)
        return timing.total if timing is not None else 0.0

    def items(self) -> list[tuple[Callable, Timing]]:
        """``(handler, timing)`` of every handler called so far (a copy: safe to read while others count)."""
        return list(self._timings.items())
