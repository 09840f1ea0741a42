"""scripts/adversary.py's edge attacks run end to end at a tiny size against asok_green, so they cannot rot.

Nothing is timed: only that the run exits 0, writes its table and answers the
smuggling and malformed-head rows with the server's refusals.
"""

from __future__ import annotations

import json

import pytest

from tests.test_reliability_smoke import run_script

pytestmark = pytest.mark.timeout(300)


def test_edge_attacks_run_and_asok_green_refuses_them(tmp_path):
    attacks = "smuggle,malformed,cut_short,nested_json"
    done = run_script(
        "adversary.py", "--quick", "--servers", "asok_green", "--attacks", attacks, "--json", str(tmp_path / "a.json")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "smuggle: answer" in done.stdout and "malformed: answer" in done.stdout
    rows = json.loads((tmp_path / "a.json").read_text())["servers"]["asok_green"]
    assert rows["smuggle"]["answer"].startswith("400+close 8/8")
    assert rows["malformed"]["answer"] == "400 5/5"
    assert rows["cut_short"]["answer"] == "400 x20"
    for attack in ("smuggle", "malformed", "cut_short"):
        assert rows[attack]["tracebacks"] == 0
