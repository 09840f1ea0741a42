"""scripts/resume_bench.py runs end to end at a tiny size, so the benchmark cannot rot.

A few clients, a few seconds per scenario, a fan-out to a few dozen. Nothing
here is timed and no number is held to a target: the numbers are whatever this
machine gives; only that every scenario ran and reported them is checked.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from tests.cluster_support import need_redis_server

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One tiny run of every scenario."""
    need_redis_server()
    out = tmp_path_factory.mktemp("resume-bench")
    report = out / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\n## Resume\n\nold numbers\n\n## Next\n\nkept\n")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "resume_bench.py"),
            *("--seconds", "3", "--clients", "4", "--drain", "1", "--settle", "3"),
            *("--subscribers", "20", "--idle", "40", "--rounds", "2"),
            *("--json", str(out / "result.json"), "--report", str(report)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "result.json").read_text()), report.read_text()


def test_every_scenario_reports_resume_and_plain_clients(bench):
    _, result, _ = bench
    for key in ("a", "b", "c"):
        scenario = result["scenarios"][key]
        assert scenario["sent"] > 0
        for kind in ("resume", "plain"):
            assert scenario[kind]["clients"] == 4
            assert scenario[kind]["delivered_percent"] is not None
            assert {"out_of_order", "duplicates", "connects"} <= set(scenario[kind])
    assert result["scenarios"]["a"]["links_cut"] > 0
    assert result["scenarios"]["b"]["restarted"] and result["scenarios"]["b"]["server_alive"]
    assert "refused_connections" in result["scenarios"]["b"]


def test_the_cost_of_history_is_measured_on_and_off(bench):
    _, result, _ = bench
    variants = result["scenarios"]["cost"]["variants"]
    for name in ("history on", "history off"):
        assert variants[name]["cpu_us_per_msg"] is not None
        assert variants[name]["bytes_per_idle_conn"] is not None


def test_the_report_section_replaces_the_old_one_and_keeps_the_rest(bench):
    done, _, report = bench
    assert "old numbers" not in report and "## Next\n\nkept" in report
    assert report.count("## Resume") == 1
    assert "Connections refused during (b)" in report and "History's cost" in report
    assert "(a) link cut every" in done.stdout
