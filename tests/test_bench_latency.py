"""The figures of the bench's latency-at-scale test, from round trips to the report (pure logic)."""

from __future__ import annotations

import math
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from benchlib import latency_report, shootout  # noqa: E402
from benchlib.targets import latency_verdict  # noqa: E402

pytestmark = pytest.mark.quick


def _step(clients: int, p95: float, samples: int = 100) -> dict:
    return {"clients": clients, "samples": samples, "p50_ms": p95 / 2, "p95_ms": p95}


def test_a_step_counts_timed_out_requests_as_infinitely_slow():
    step = shootout.step_summary(1000, [10.0] * 90, timeouts=10, rounds=25, connected=998)
    assert step["clients"] == 1000 and step["connected"] == 998
    assert step["samples"] == 100
    assert step["p50_ms"] == 10.0
    assert math.isinf(step["p95_ms"])


def test_the_figure_is_the_last_step_within_the_limit_before_the_first_miss():
    steps = [_step(1000, 50), _step(2000, 120), _step(3000, 260), _step(4000, 200)]
    assert shootout.clients_within(steps, 250) == 2000
    assert shootout.clients_within([_step(1000, 251)], 250) == 0
    assert shootout.clients_within([_step(1000, 10, samples=0)], 250) == 0
    assert shootout.clients_within([_step(1000, 10), _step(2000, 250)], 250) == 2000


def test_senders_are_shared_out_over_the_client_processes():
    plan = shootout.LatencyPlan(max_clients=20000, senders=4, per_process=5000)
    assert plan.processes() == 4
    assert plan.senders_per_process() == 1 and plan.senders_in_flight() == 4
    small = shootout.LatencyPlan(max_clients=40, step=20, senders=4)
    assert small.processes() == 1 and small.senders_per_process() == 4
    assert small.steps() == [20, 40]


def test_the_curve_is_the_median_over_the_passes_that_reached_a_step():
    curve = shootout.median_curve([[_step(1000, 100), _step(2000, 300)], [_step(1000, 140)], [_step(1000, 120)]])
    assert [(s["clients"], s["passes"], s["p95_ms"]) for s in curve] == [(1000, 3, 120), (2000, 1, 300)]


def _latency(green: int, websockets: int) -> dict:
    plan = shootout.LatencyPlan(max_clients=4000, passes=1)
    peers = [
        shootout.summarise(name, label, [{"steps": [_step(1000, 90)], "within": within, "stopped": "p95"}], 250)
        for name, label, within in (
            ("asok_green", "asok_green", green),
            ("websockets_asyncio", "websockets", websockets),
        )
    ]
    return {
        "plan": plan.__dict__,
        "senders": 4,
        "senders_per_process": 4,
        "processes": 1,
        "pinning": "-",
        "peers": peers,
    }


def test_the_target_is_one_and_a_half_times_the_clients_of_websockets():
    assert latency_verdict(_latency(3000, 2000)).met is True
    missed = latency_verdict(_latency(2000, 2000))
    assert missed.met is False and "1.00x" in missed.measured
    assert latency_verdict(_latency(1000, 0)).met is True
    assert latency_verdict(_latency(0, 1000)).met is False
    assert latency_verdict(_latency(0, 0)).met is None


def test_the_section_replaces_its_earlier_self_and_keeps_the_rest_of_the_report():
    report = "# Benchmarks\n\n## Results\n\nold\n\n## Method\n\nhow\n"
    first = latency_report.replace_section(report, latency_report.section(_latency(3000, 2000)))
    assert first.index("## Results") < first.index("## Latency at scale") < first.index("## Method")
    assert "| asok_green | 3,000 | 3,000 | 1.50x |" in first
    second = latency_report.replace_section(first, latency_report.section(_latency(4000, 2000)))
    assert second.count("## Latency at scale") == 1
    assert "| asok_green | 4,000 | 4,000 | 2.00x |" in second and "3,000" not in second
    assert second.endswith("## Method\n\nhow\n")


def test_runs_are_pooled_pass_by_pass():
    first, second = _latency(1000, 750), _latency(750, 750)
    for result in (first, second):
        result.update(load_after=1.0, cpu_pressure=0.5)
    pooled = shootout.pool([first, second])
    green = next(p for p in pooled["peers"] if p["name"] == "asok_green")
    assert [p["within"] for p in green["passes"]] == [1000, 750]
    assert green["within"] == 875
    assert pooled["plan"]["passes"] == 2
    assert latency_verdict(pooled).measured.startswith("1.17x")
