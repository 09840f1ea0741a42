"""The re-check's decisions and the job that runs it, on stand-in connections (pure logic).

The end-to-end outages (a session directory that cannot be read, Redis
stopped and restarted) are in test_session_faults.py.
"""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import gevent
import pytest

from asok_green.bridge.auth import SessionState
from asok_green.server import revocation

pytestmark = pytest.mark.quick


class Tab:
    """A logged-in connection as the re-check sees it."""

    def __init__(self, sid: str, user_id: int):
        self.login_sid = sid
        self.user = SimpleNamespace(id=user_id)
        self.closed = False
        self.close_code = None

    def close(self, code: int, reason: str) -> None:
        self.closed, self.close_code = True, code


def test_only_sessions_that_ended_are_closed():
    live, ended = Tab("s1", 1), Tab("s2", 2)
    states = {"s1": SessionState.LIVE, "s2": SessionState.ENDED}
    assert revocation.recheck([live, ended], lambda sid, uid: states[sid]) == (1, True)
    assert not live.closed
    assert ended.close_code == 1008


def test_an_unknown_answer_closes_nothing_and_ends_the_pass():
    tabs = [Tab("s1", 1), Tab("s2", 2), Tab("s3", 3)]
    asked = []

    def state_of(sid, uid):
        asked.append(sid)
        return SessionState.UNKNOWN

    assert revocation.recheck(tabs, state_of) == (0, False)
    assert asked == ["s1"]
    assert not any(tab.closed for tab in tabs)


def test_the_job_survives_errors_logs_the_first_with_its_traceback_and_the_recovery(caplog):
    failures = [RuntimeError("registry bug"), RuntimeError("registry bug")]
    tab = Tab("s1", 1)

    def connections():
        if failures:
            raise failures.pop()
        return [tab]

    server = SimpleNamespace(
        limits=SimpleNamespace(session_check_interval=0.001),
        connections=connections,
        auth=SimpleNamespace(session_state=lambda sid, uid: SessionState.ENDED),
        stats=Counter(),
    )
    caplog.set_level(logging.INFO, logger="asok_green")
    job = gevent.spawn(revocation.run, server)
    try:
        with gevent.Timeout(10):
            while not server.stats["revoked"]:
                gevent.sleep(0.001)
    finally:
        job.kill()
    assert tab.close_code == 1008
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "session re-check failing: RuntimeError: registry bug" in errors[0].getMessage()
    assert any("session re-check back after 2 failure(s)" in r.getMessage() for r in caplog.records)


def test_passes_the_store_could_not_answer_are_counted():
    server = SimpleNamespace(
        limits=SimpleNamespace(session_check_interval=0.001),
        connections=lambda: [Tab("s1", 1)],
        auth=SimpleNamespace(session_state=lambda sid, uid: SessionState.UNKNOWN),
        stats=Counter(),
    )
    job = gevent.spawn(revocation.run, server)
    try:
        with gevent.Timeout(10):
            while server.stats["session_rechecks_unknown"] < 3:
                gevent.sleep(0.001)
    finally:
        job.kill()
    assert server.stats["revoked"] == 0
