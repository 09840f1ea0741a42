"""When the server hands freed memory back: after a storm of sockets has passed, never during one."""

from __future__ import annotations

import pytest

from asok_green.server.trim import StormWatch, malloc_trim

pytestmark = pytest.mark.quick


def test_a_storm_that_has_passed_trims_once():
    watch = StormWatch(storm=500)
    assert not watch.trim_now(10)
    assert not watch.trim_now(2010)  # the storm arrives
    assert not watch.trim_now(40)  # it is leaving: the count still moves
    assert watch.trim_now(40)  # level for a whole check: trim
    assert not watch.trim_now(40)  # and only once


def test_steady_traffic_and_small_dips_never_trim():
    watch = StormWatch(storm=500)
    for held in [300, 310, 290, 305, 200, 200, 250, 250] * 5:
        assert not watch.trim_now(held)


def test_a_storm_still_under_way_does_not_trim():
    watch = StormWatch(storm=500)
    watch.trim_now(2000)
    assert not watch.trim_now(1000)
    assert not watch.trim_now(200)
    assert watch.trim_now(199)


def test_trim_runs_on_glibc():
    assert malloc_trim()  # glibc, as on every machine this runs on


def test_loading_the_trim_starts_no_child_process(monkeypatch):
    """A worker that imports the module spawns nothing (ctypes' find_library would run ldconfig)."""
    import importlib
    import subprocess

    from asok_green.server import trim

    def refuse(*args, **kwargs):
        raise AssertionError(f"a child process was started: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    reloaded = importlib.reload(trim)
    assert reloaded.malloc_trim() is True
