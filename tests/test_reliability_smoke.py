"""scripts/adversary.py and scripts/soak.py run end to end at a tiny size, so they cannot rot.

Nothing here is timed and no target is asserted: today's numbers are whatever
this machine and this code give; only that each script runs against a real
server, prints its summary, writes its files and exits 0 is checked.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"

pytestmark = pytest.mark.timeout(300)


def run_script(name: str, *options: str) -> subprocess.CompletedProcess:
    """Run scripts/NAME with ``options``; its output is captured."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *options], cwd=REPO, capture_output=True, text=True, timeout=280
    )


@pytest.fixture(scope="module")
def adversary(tmp_path_factory):
    """One quick adversary run on asok_green (peers start as in the bench, whose smoke test runs one)."""
    out = tmp_path_factory.mktemp("adversary")
    done = run_script(
        "adversary.py",
        "--quick",
        "--seconds",
        "1",
        "--servers",
        "asok_green",
        "--markdown",
        str(out / "adversary.md"),
        "--json",
        str(out / "adversary.json"),
    )
    return done, out


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    """One quick soak of asok_green."""
    out = tmp_path_factory.mktemp("soak")
    done = run_script("soak.py", "--quick", "--markdown", str(out / "soak.md"), "--json", str(out / "soak.json"))
    return done, out


def test_adversary_prints_every_attack_for_every_server(adversary):
    done, _ = adversary
    assert done.returncode == 0, done.stderr[-3000:]
    assert "asok_green" in done.stdout
    for row in ("quiet round trip", "under flood", "flooder share", "fragments:", "pings unread:", "slow consumer:"):
        assert row in done.stdout, row
    assert "Targets (asok_green):" in done.stdout


def test_adversary_measured_the_quiet_round_trips_and_the_attacks(adversary):
    _, out = adversary
    report = json.loads((out / "adversary.json").read_text())
    for server in ("asok_green",):
        attacks = report["servers"][server]
        assert attacks["flood"]["quiet"]["n"] > 0
        assert attacks["flood"]["flooder"]["sent"] > 0
        assert attacks["fragments"]["frames"] > 0
        assert attacks["pings"]["pings"] > 0
        assert attacks["slow"]["readers"] > 0
    assert "| asok_green target |" in (out / "adversary.md").read_text()


def test_soak_prints_every_measurement_and_the_targets(soak):
    done, out = soak
    assert done.returncode == 0, done.stderr[-3000:]
    for label in ("empty server", "baseline", "warm-up", "end of churn", "after churn", "after disconnect"):
        assert label in done.stdout, label
    assert "| target | measured | |" in done.stdout
    run = json.loads((out / "soak.json").read_text())
    assert run["result"]["held"]["open"] > 0
    assert run["result"]["churn"].get("attempted", 0) > 0
    assert (out / "soak.md").read_text() == done.stdout.rstrip("\n") + "\n"
