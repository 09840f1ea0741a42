"""scripts/bench.py runs end to end at a tiny size, so the benchmark cannot rot.

Two peers, a few dozen connections, seconds of load. Nothing here is timed:
the numbers are whatever this machine gives; only their presence is checked.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One quick run of the bench on asok_green and bare gevent-websocket."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--peers",
            "asok_green,gevent_websocket",
            "--output",
            str(out / "BENCHMARKS.md"),
            "--chart",
            str(out / "bench.png"),
            "--json",
            str(out / "results.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    return done, out


def test_bench_exits_cleanly_and_prints_the_table(bench):
    done, _ = bench
    assert done.returncode == 0, done.stderr[-3000:]
    assert "asok_green" in done.stdout and "gevent-websocket" in done.stdout
    assert "KB/idle conn" in done.stdout
    assert "Targets" in done.stdout


def test_bench_shows_progress_while_it_runs(bench):
    done, _ = bench
    assert "asok_green: started" in done.stderr
    assert "anonymous idle open" in done.stderr


def test_every_peer_held_its_idle_connections_and_got_the_broadcasts(bench):
    _, out = bench
    run = json.loads((out / "results.json").read_text())
    assert [p["name"] for p in run["peers"]] == ["asok_green", "gevent_websocket"]
    for peer in run["peers"]:
        levels = peer["idle"]["anonymous"]
        assert [lv["open"] for lv in levels] == [lv["target"] for lv in levels] == run["plan"]["sizes"]
        for size in run["plan"]["fanout"]:
            fanout = peer["fanout"][str(size)]
            assert fanout["delivered"] == fanout["armed"] == size
        assert peer["echo"]["rate"] > 0
        assert peer["handshakes"]["rate"] > 0
    assert run["peers"][0]["idle"]["authenticated"], "asok_green's logged-in run is missing"


def test_report_and_chart_are_written(bench):
    _, out = bench
    report = (out / "BENCHMARKS.md").read_text()
    assert "## Results" in report and "## Targets" in report and "## Method" in report
    assert "bench.png" in report
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
