"""What a server process costs, read from /proc: resident memory, threads and CPU time."""

from __future__ import annotations

import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    return _status_field(pid, "VmRSS:") * 1024


def thread_count(pid: int) -> int:
    """OS threads of ``pid``."""
    return _status_field(pid, "Threads:")


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name):
                return int(line.split()[1])
    raise KeyError(name)


def open_files(pid: int) -> int:
    """File descriptors ``pid`` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of ``pid`` (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_ticks_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid``, in clock-tick resolution (10 ms)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s live threads in nanosecond resolution (sum of /proc/PID/task/*/schedstat).

    Falls back to clock ticks where schedstat is missing. Threads that have
    exited are not counted: read it before and after work in which none exit.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
                total += int(schedstat.read().split()[0])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, IndexError):
            return cpu_ticks_seconds(pid)
    return total / 1e9


def wait_idle(pid: int, busy_below: float = 0.1, window: float = 0.5, timeout: float = 20.0) -> float:
    """Wait until ``pid`` uses less than ``busy_below`` of a core over ``window`` seconds.

    Returns the seconds waited (``timeout`` if it never settled).
    """
    started = time.monotonic()
    before = cpu_ticks_seconds(pid)
    while time.monotonic() - started < timeout:
        time.sleep(window)
        now = cpu_ticks_seconds(pid)
        if now - before < busy_below * window:
            return time.monotonic() - started
        before = now
    return timeout
