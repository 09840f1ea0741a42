"""A probe client's round trips, and their percentiles.

A round trip that gets no answer within its timeout counts as ``inf``: a
server that stalls shows up as "timeout" in the percentiles it spoils.
"""

from __future__ import annotations

import math
import time

from .wsclient import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawClient, Timeout, client_frame


def round_trips(
    client: RawClient, count: int, *, gap: float = 0.01, timeout: float = 2.0, stop_at: float | None = None
) -> list[float]:
    """Send ``"whoami N"`` and wait for its echo, ``count`` times (or until ``stop_at``); seconds each.

    Answers to earlier, timed-out probes are recognised by their number and skipped.
    """
    samples: list[float] = []
    for seq in range(count):
        if stop_at is not None and time.monotonic() >= stop_at:
            break
        text = f"whoami {seq}".encode()
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        if not client.send_all(client_frame(OP_TEXT, text), deadline) or not _await_echo(client, text, deadline):
            samples.append(math.inf)
        else:
            samples.append(time.perf_counter() - started)
        if client.eof:
            break
        if gap:
            time.sleep(gap)
    return samples


def _await_echo(client: RawClient, text: bytes, deadline: float) -> bool:
    while True:
        try:
            frames = client.frames(deadline)
        except Timeout:
            return False
        if not frames:
            return False  # end of stream
        for opcode, payload in frames:
            if opcode == OP_TEXT and payload == text:
                return True
            if opcode == OP_PING:
                client.send_all(client_frame(OP_PONG, payload), deadline)
            elif opcode == OP_CLOSE:
                client.eof = True
                return False


def percentile(sorted_samples: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted samples, nearest rank."""
    if not sorted_samples:
        return math.nan
    rank = max(0, min(len(sorted_samples) - 1, math.ceil(q * len(sorted_samples)) - 1))
    return sorted_samples[rank]


def summary(samples: list[float]) -> dict:
    """Count, timeouts, p50, p99 and max in milliseconds (``inf`` where a timeout decides it)."""
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "timeouts": sum(1 for s in ordered if math.isinf(s)),
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else math.nan,
    }


def fmt_ms(value: float) -> str:
    """Milliseconds for a table cell: "timeout" for inf, "-" for nan."""
    if math.isinf(value):
        return "timeout"
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
