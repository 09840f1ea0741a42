"""scripts/bench.py runs end to end at a tiny size, so the benchmark cannot rot.

Two peers, a few dozen connections, seconds of load. Nothing here is timed:
the numbers are whatever this machine gives; only their presence is checked.
"""

from __future__ import annotations

import json
import pathlib
import shutil
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
            str(out / "json" / "results.json"),
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
    run = json.loads((out / "json" / "results.json").read_text())
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
    steady = run["steady"]["builds"]["asok_green"]
    assert [r["open"] for r in steady["rounds"]] == [run["steady"]["plan"]["connections"]]
    assert steady["median"]["never_spoke"] and steady["median"]["steady"], "the idle figures are missing"
    assert [p["name"] for p in run["latency"]["peers"]] == ["asok_green", "gevent_websocket"]
    assert all(p["curve"] for p in run["latency"]["peers"])


def test_report_and_chart_are_written(bench):
    _, out = bench
    report = (out / "BENCHMARKS.md").read_text()
    assert "## Results" in report and "## Targets" in report and "## Method" in report
    assert "## Latency at scale" in report
    assert "## Idle memory: never spoke and steady" in report
    assert "bench.png" in report
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def latency(tmp_path_factory):
    """One quick run of the latency-at-scale test alone, on asok_green and websockets, into an existing report."""
    out = tmp_path_factory.mktemp("latency")
    report = out / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\n## Results\n\nearlier run\n\n## Method\n\nhow\n")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--latency-only",
            "--peers",
            "asok_green,websockets_asyncio",
            "--max-clients",
            "30",
            "--step",
            "15",
            "--seconds",
            "1",
            "--latency-passes",
            "1",
            "--no-profile",
            "--output",
            str(report),
            "--chart",
            str(out / "latency.png"),
            "--json",
            str(out / "latency.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    return done, out


def test_latency_only_prints_clients_within_the_limit_and_the_senders(latency):
    done, _ = latency
    assert done.returncode == 0, done.stderr[-3000:]
    assert "clients within 250 ms p95" in done.stdout
    assert "senders per round" in done.stdout
    assert "asok_green" in done.stdout and "websockets" in done.stdout


def test_latency_results_hold_a_curve_and_a_figure_per_server(latency):
    _, out = latency
    result = json.loads((out / "latency.json").read_text())["latency"]
    assert [p["name"] for p in result["peers"]] == ["asok_green", "websockets_asyncio"]
    assert result["senders"] >= 1
    for peer in result["peers"]:
        assert len(peer["passes"]) == 1
        steps = peer["passes"][0]["steps"]
        assert steps and [s["clients"] for s in steps] == [15, 30][: len(steps)]
        for step in steps:
            assert step["samples"] > 0
            assert 0 < step["p50_ms"] <= step["p95_ms"]
        assert peer["within"] in (0, 15, 30)
        assert [s["clients"] for s in peer["curve"]] == [s["clients"] for s in steps]


def test_latency_section_goes_into_the_report_and_its_chart_is_drawn(latency):
    _, out = latency
    report = (out / "BENCHMARKS.md").read_text()
    assert "## Results\n\nearlier run" in report and "## Method" in report
    assert report.index("## Latency at scale") < report.index("## Method")
    assert "| asok_green |" in report and "latency.png" in report
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_json_folder_is_made_and_the_floor_measured(bench):
    done, out = bench
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "json" / "results.json").read_text())
    floor = run["floor"]
    if "error" in floor:
        pytest.skip(f"no floor on this machine: {floor['error']}")
    assert set(floor["fanout"]) == {str(n) for n in run["plan"]["fanout"]}
    assert all(entry["cpu_us_per_msg"] > 0 for entry in floor["fanout"].values())
    assert floor["handshake"]["cpu_us_each"] > 0
    assert "## The floor: the system calls alone" in (out / "BENCHMARKS.md").read_text()


# -- the strongest peers' apps: the same routes as every peer (scripts/peers/__init__.py) -----------------

sys.path.insert(0, str(REPO / "scripts"))
from benchlib import field  # noqa: E402
from benchlib.servers import PEERS_BY_NAME, Peer, start_server  # noqa: E402

FIELD = ("uvicorn_websockets", "uvicorn_wsproto", "aiohttp", "picows", "granian", "socketify")


@pytest.mark.parametrize("name", FIELD)
def test_a_field_peer_echoes_broadcasts_to_the_room_and_answers_http(name, tmp_path):
    import urllib.request

    import websocket

    peer = PEERS_BY_NAME[name]
    if peer.installed():
        pytest.skip(peer.installed())
    server = start_server(peer, tmp_path, tmp_path)
    clients = []
    try:
        assert urllib.request.urlopen(server.http_url + "/", timeout=10).status == 200
        echo = websocket.create_connection(server.ws_url("/echo"), timeout=10)
        clients.append(echo)
        echo.send("hello")
        assert echo.recv() == "hello"
        room = [websocket.create_connection(server.ws_url("/room"), timeout=10) for _ in range(3)]
        clients += room
        room[0].send("!bcast 2 16")
        assert room[0].recv() == "!done 2"
        for subscriber in room[1:]:
            got = [json.loads(subscriber.recv()) for _ in range(2)]
            assert got == [{"seq": 0, "data": "x" * 16}, {"seq": 1, "data": "x" * 16}]
        if server.peer.worker_child:
            assert server.pid != server.proc.pid
    finally:
        for client in clients:
            client.close()
        server.stop()


@pytest.mark.quick
def test_a_peer_that_is_not_installed_says_so_in_every_row_of_the_ranking():
    missing = Peer("nowhere", "nowhere", auth=False, http_path="/", package="no_such_package_here")
    why = missing.installed()
    assert why and "no_such_package_here is not installed" in why
    run = {
        "plan": {"sizes": [1000], "fanout": [1000]},
        "peers": [
            {"name": "asok_green", "label": "asok_green", "problems": [], "echo": {"rate": 200.0, "cpu_us": 40.0}},
            {"name": "picows", "label": "picows", "problems": [], "echo": {"rate": 400.0, "cpu_us": 20.0}},
            {"name": "nowhere", "label": "nowhere", "problems": [why], "unavailable": why},
        ],
    }
    echo = next(e for e in field.ranking(run) if e["row"].key == "echo")
    assert echo["best"] == "picows" and echo["ratios"] == {"picows": 1.0, "asok_green": 2.0}
    table = field.ranking_markdown(run)
    assert table.count(f"*{why}*") == len(field.rows(run))
    assert "| echo msgs/s | picows (400) | 2.00x | **best** |" in table


def test_the_follow_cost_script_holds_a_path_per_client_on_each_tree(tmp_path):
    baseline = tmp_path / "tree"
    shutil.copytree(REPO / "asok_green", baseline / "asok_green")  # stands for another tree
    out = tmp_path / "follow.json"
    script = str(REPO / "scripts" / "follow_cost.py")
    argv = [sys.executable, script, "--quick", "--baseline", str(baseline), "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    servers = json.loads(out.read_text())["servers"]
    assert {name: entry["held"] for name, entry in servers.items()} == {"asok_green": 300, "baseline": 300}
    assert all(entry["cpu_percent"] >= 0 and entry["rss"] > 0 for entry in servers.values())
