"""LogLimiter: at most a burst of lines per key per interval, then one summary of the rest."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from asok_green.core import logs
from asok_green.core.logs import LogLimiter, log_limited

pytestmark = pytest.mark.quick


def test_lines_within_the_burst_are_logged():
    limiter = LogLimiter()
    assert [limiter.allow("k", 0.0, 3, 60) for _ in range(3)] == [(True, 0)] * 3


def test_lines_past_the_burst_are_counted_not_logged():
    limiter = LogLimiter()
    for _ in range(3):
        limiter.allow("k", 0.0, 3, 60)
    assert [limiter.allow("k", 1.0, 3, 60) for _ in range(5)] == [(False, 0)] * 5


def test_first_line_after_the_interval_carries_the_suppressed_count():
    limiter = LogLimiter()
    for _ in range(8):
        limiter.allow("k", 0.0, 3, 60)
    assert limiter.allow("k", 60.0, 3, 60) == (True, 5)
    # The new window starts with that line.
    assert limiter.allow("k", 61.0, 3, 60) == (True, 0)


def test_keys_are_limited_apart():
    limiter = LogLimiter()
    for _ in range(3):
        limiter.allow("a", 0.0, 3, 60)
    assert limiter.allow("a", 0.0, 3, 60) == (False, 0)
    assert limiter.allow("b", 0.0, 3, 60) == (True, 0)


def test_a_burst_of_zero_means_no_limit():
    limiter = LogLimiter()
    assert all(limiter.allow("k", 0.0, 0, 60) == (True, 0) for _ in range(1000))


def test_pending_summaries_are_handed_out_once_the_interval_ends():
    limiter = LogLimiter()
    for _ in range(5):
        limiter.allow("k", 0.0, 2, 10)
    assert limiter.pending(5.0, 10) == []
    assert limiter.pending(10.0, 10) == [("k", 3)]
    assert limiter.pending(30.0, 10) == []


def test_keys_beyond_max_keys_forget_the_oldest():
    limiter = LogLimiter(max_keys=2)
    limiter.allow("a", 0.0, 1, 60)
    limiter.allow("b", 0.0, 1, 60)
    limiter.allow("c", 0.0, 1, 60)
    # "a" was forgotten: it starts a fresh window.
    assert limiter.allow("a", 0.0, 1, 60) == (True, 0)
    assert len(limiter._windows) == 2


def test_log_limited_writes_the_burst_then_one_summary(caplog, monkeypatch):
    monkeypatch.setattr(logs, "limiter", LogLimiter())
    clock = iter([0.0] * 20 + [100.0])
    monkeypatch.setattr(logs, "monotonic", lambda: next(clock))
    limits = SimpleNamespace(log_burst=2, log_interval=60.0)
    logger = logging.getLogger("asok_green.test_logs")
    with caplog.at_level(logging.INFO, logger="asok_green.test_logs"):
        logged = [log_limited(logger, logging.INFO, "bad", limits, "bad client %d", i) for i in range(21)]
    assert logged == [True, True] + [False] * 18 + [True]
    assert [r.getMessage() for r in caplog.records] == [
        "bad client 0",
        "bad client 1",
        "suppressed 18 similar lines (bad) in the last 60s",
        "bad client 20",
    ]
