"""Rate-limited logging, so that a flood of bad clients cannot flood the log.

Each kind of line (a *key*: "protocol error", "slow consumer", ...) may be
logged ``burst`` times per ``interval`` seconds. Past that, lines of that key
are counted instead of written, and the next line logged for that key after
the interval is preceded by one summary: "suppressed K similar lines".

:class:`LogLimiter` is pure (the caller passes the time), so tests can drive
it; :func:`log_limited` is what the server's I/O code calls. Keys are meant to
be a few fixed categories, not one per client: the limiter keeps at most
``max_keys`` of them and forgets the oldest beyond.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

__all__ = ["LogLimiter", "flush_suppressed", "limiter", "log_limited"]


class LogLimiter:
    """At most ``burst`` lines per key per ``interval`` seconds, then a count of the rest."""

    __slots__ = ("max_keys", "_windows")

    def __init__(self, max_keys: int = 256) -> None:
        """An empty limiter that tracks at most ``max_keys`` keys."""
        self.max_keys = max_keys
        # key -> [window start, lines logged in it, lines suppressed since the last summary]
        self._windows: dict[str, list] = {}

    def allow(self, key: str, now: float, burst: int, interval: float) -> tuple[bool, int]:
        """Whether to log one more line of ``key`` at time ``now``, and how many to report as suppressed.

        The second value is non-zero only on the first line allowed after
        some were suppressed: the caller logs a summary of that many lines
        first. ``burst`` of 0 or less means "no limit".
        """
        if burst <= 0:
            return True, 0
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                # Forget the key that has been around the longest.
                del self._windows[next(iter(self._windows))]
            self._windows[key] = [now, 1, 0]
            return True, 0
        if now - window[0] >= interval:
            suppressed = window[2]
            window[:] = [now, 1, 0]
            return True, suppressed
        if window[1] < burst:
            window[1] += 1
            return True, 0
        window[2] += 1
        return False, 0

    def pending(self, now: float, interval: float) -> list[tuple[str, int]]:
        """``(key, suppressed)`` for every key whose window ended with lines suppressed; resets them.

        For a periodic job, so a flood that stops still gets its summary.
        """
        due = []
        for key, window in self._windows.items():
            if window[2] and now - window[0] >= interval:
                due.append((key, window[2]))
                window[:] = [now, 0, 0]
        return due


#: The process's limiter: one per process, shared by every connection.
limiter = LogLimiter()


def log_limited(
    logger: logging.Logger,
    level: int,
    key: str,
    limits: Any,
    msg: str,
    *args: Any,
    extra: dict[str, Any] | None = None,
    exc_info: bool = False,
) -> bool:
    """Log ``msg % args`` at ``level`` unless lines of ``key`` are over their rate; True if logged.

    With ``exc_info``, a line that is logged carries the exception being handled.

    ``limits`` gives the rate: ``log_burst`` lines per ``log_interval`` seconds
    (see :class:`asok_green.core.limits.Limits`). ``extra`` holds the line's fields
    for structured logs (an ``event`` name, the connection, the cause).
    """
    if not logger.isEnabledFor(level):
        return False
    interval = limits.log_interval
    allowed, suppressed = limiter.allow(key, monotonic(), limits.log_burst, interval)
    if suppressed:
        logger.log(
            level,
            "suppressed %d similar lines (%s) in the last %.0fs",
            suppressed,
            key,
            interval,
            extra={"event": "log_suppressed", "kind": key, "suppressed": suppressed},
        )
    if allowed:
        logger.log(level, msg, *args, extra=extra, exc_info=exc_info)
    return allowed


def flush_suppressed(logger: logging.Logger, limits: Any) -> int:
    """Log the summary of every key whose window ended with lines suppressed; returns how many summaries.

    Called periodically, so a flood that stops still gets its summary line.
    """
    interval = limits.log_interval
    due = limiter.pending(monotonic(), interval)
    for key, suppressed in due:
        logger.warning(
            "suppressed %d similar lines (%s) in the last %.0fs",
            suppressed,
            key,
            interval,
            extra={"event": "log_suppressed", "kind": key, "suppressed": suppressed},
        )
    return len(due)
