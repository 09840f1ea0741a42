"""Memory handed back to the system once a storm of sockets has passed.

glibc's allocator keeps the pages that freed objects held, for reuse: after
thousands of sockets end together (a flood of stalled bodies, a crowd that
leaves at once) the process would keep its peak for good, although every object
was freed. So every :data:`CHECK_SECONDS` the server looks at how many sockets
it holds (requests in flight and WebSockets); when that number has fallen by
:data:`STORM` or more from its highest since the last trim, and has stayed level
for a whole check (the storm is over, not under way), a full garbage collection
(the storm's cycles, such as exceptions with their frames, would otherwise wait
for a rare one) and ``malloc_trim(0)`` run once. A server with steady traffic
never trims; the pair costs tens of milliseconds on a heap of a hundred
megabytes, once per storm.
"""

from __future__ import annotations

import ctypes
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gevent

__all__ = ["CHECK_SECONDS", "STORM", "StormWatch", "malloc_trim", "run"]

logger = logging.getLogger("asok_green")

#: Seconds between two looks at the socket count.
CHECK_SECONDS = 5.0
#: Sockets that must have ended since the highest count for a trim to be worth it.
STORM = 500


@dataclass
class StormWatch:
    """Decides, from socket counts taken at each check, when a storm has passed."""

    storm: int = STORM
    peak: int = 0
    last: int = 0

    def trim_now(self, held: int) -> bool:
        """Note ``held`` sockets at this check; True when a trim is due (the watch then starts over)."""
        self.peak = max(self.peak, held)
        level = abs(held - self.last) < max(1, self.storm // 10)
        self.last = held
        if level and self.peak - held >= self.storm:
            self.peak = held
            return True
        return False


def _libc_trim() -> Callable[[int], int] | None:
    # The symbols the process already has (glibc's among them), not ctypes.util.find_library:
    # that runs ldconfig in a child process, in every worker as it starts.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to hand back this way
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _libc_trim()


def malloc_trim() -> bool:
    """Hand the allocator's free pages back to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def run(held: Callable[[], int], watch: StormWatch | None = None, every: float = CHECK_SECONDS) -> None:
    """Check ``held()`` every ``every`` seconds for as long as the greenlet lives; trim after each storm."""
    watch = watch or StormWatch()
    while True:
        gevent.sleep(every)
        try:
            if watch.trim_now(held()) and gc.collect() >= 0 and malloc_trim():
                logger.debug("storm over: free memory handed back to the system")
        except Exception:
            logger.exception("memory trim failed: going on")
