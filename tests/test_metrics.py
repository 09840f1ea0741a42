"""asok_green's Prometheus families in Asok's METRICS_PATH response, and the pure parts behind them."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from asok_green.ops import metrics
from tests.asok_project import login, project_env
from tests.conftest import asok_serve, ws_connect

pytestmark = pytest.mark.timeout(60)

TOKEN = "metrics-token-41"


# -- pure parts ------------------------------------------------------------------------


def test_timing_counts_into_cumulative_buckets():
    timing = metrics.Timing((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        timing.observe(seconds)
    assert timing.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert timing.count == 4
    assert timing.total == pytest.approx(3.65)


@pytest.mark.parametrize(
    "status, reason, cause",
    [
        (403, "origin 'x' is not allowed", "origin"),
        (403, "forbidden: the dashboard is for admins", "auth"),
        (503, "too many WebSocket connections", "limit"),
        (503, "session store unavailable, try again", "auth"),
        (404, "no WebSocket route matches /x", "route"),
        (404, "no WebSocket route matches '/x/': not a canonical path", "path"),
        (431, "request headers too large", "headers"),
        (400, "missing Sec-WebSocket-Key", "protocol"),
    ],
)
def test_refusal_causes(status, reason, cause):
    assert metrics.refusal_cause(status, reason) == cause


def test_processes_combine_by_sum_and_cluster_wide_gauges_by_max():
    a = [
        ("asok_green_connections", "", {"route": "/chat/[room]"}, 2),
        ("asok_green_users_online", "", {}, 5),
    ]
    b = [
        ("asok_green_connections", "", {"route": "/chat/[room]"}, 3),
        ("asok_green_connections", "", {"route": "/echo"}, 1),
        ("asok_green_users_online", "", {}, 5),
    ]
    combined = {(f, tuple(sorted(labels.items()))): v for f, _, labels, v in metrics.combine([a, b])}
    assert combined[("asok_green_connections", (("route", "/chat/[room]"),))] == 5
    assert combined[("asok_green_connections", (("route", "/echo"),))] == 1
    assert combined[("asok_green_users_online", ())] == 5


def test_sibling_files_of_processes_that_are_gone_are_dropped(tmp_path):
    sample = [("asok_green_processes", "", {}, 1)]
    metrics.write_process_file(str(tmp_path), sample)
    (tmp_path / "999999999.json").write_text('[["asok_green_processes", "", {}, 1]]')
    (tmp_path / "1.json").write_text('[["asok_green_processes", "", {}, 1]]')  # init: alive
    siblings = metrics.read_sibling_files(str(tmp_path))
    assert siblings == [[("asok_green_processes", "", {}, 1)]]
    assert not (tmp_path / "999999999.json").exists()
    assert (tmp_path / f"{os.getpid()}.json").exists()


# -- the real server -------------------------------------------------------------------


def scrape(server, token: str | None = TOKEN) -> dict:
    """{sample name: {labels tuple: value}} from the server's metrics path, parsed by prometheus_client."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(server.url + "/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def wait_for_sample(server, name: str, labels: dict, expected: float, timeout: float = 10) -> None:
    """Wait until the scraped ``name{labels}`` equals ``expected``."""
    key = tuple(sorted(labels.items()))
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = scrape(server).get(name, {}).get(key)
        if value == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name}{labels} is {value}, expected {expected}")


@pytest.fixture(scope="module")
def metrics_server(project, tmp_path_factory):
    """The test project, its metrics path (and its dashboard) guarded by a token."""
    env = project_env(METRICS_TOKEN=TOKEN, WS_DASHBOARD_TOKEN=TOKEN)
    server = asok_serve(project, tmp_path_factory.mktemp("metrics"), env=env)
    yield server
    server.stop()


def test_asok_response_gets_the_families_and_its_own_gauge_counts_the_sockets(metrics_server):
    clients = [ws_connect(metrics_server, f"/chat/room-{i}") for i in range(3)]
    try:
        wait_for_sample(metrics_server, "asok_websocket_active_connections", {}, 3)
        samples = scrape(metrics_server)
        assert samples["asok_green_connections"][(("route", "/chat/[room]"),)] == 3
        assert samples["asok_green_connections"][(("route", "/echo"),)] == 0
        # Asok's own families are still there.
        assert "asok_uptime_seconds" in samples
        # No raw path or room in any label.
        labels = {value for series in samples.values() for key in series for _, value in key}
        assert not any("room-" in value for value in labels)
    finally:
        for client in clients:
            client.close()
    wait_for_sample(metrics_server, "asok_websocket_active_connections", {}, 0)


def test_the_token_is_checked_as_asok_checks_it(metrics_server):
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(metrics_server, token=None)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        scrape(metrics_server, token="wrong")


def test_messages_bytes_handler_time_and_fanout_are_counted(metrics_server):
    before = scrape(metrics_server)
    route = (("route", "/chat/[room]"),)
    handled = before.get("asok_green_messages_received_total", {}).get(route, 0)
    sent = before["asok_green_messages_sent_total"][()]
    fanouts = before["asok_green_broadcast_fanout_seconds_count"][()]
    a, b = ws_connect(metrics_server, "/chat/count"), ws_connect(metrics_server, "/chat/count")
    try:
        a.send("hello")
        assert "hello" in a.recv() and "hello" in b.recv()
        wait_for_sample(metrics_server, "asok_green_messages_received_total", dict(route), handled + 1)
        after = scrape(metrics_server)
        assert after["asok_green_messages_sent_total"][()] == sent + 2
        assert after["asok_green_broadcast_fanout_seconds_count"][()] == fanouts + 1
        assert after["asok_green_handler_seconds_count"][route] == handled + 1
        assert after["asok_green_received_bytes_total"][()] > before["asok_green_received_bytes_total"][()]
        assert after["asok_green_sent_bytes_total"][()] > before["asok_green_sent_bytes_total"][()]
    finally:
        a.close()
        b.close()


def test_the_dashboard_and_the_metrics_read_one_count_of_handler_time(metrics_server):
    client = ws_connect(metrics_server, "/echo")
    dashboard = websocket.create_connection(
        f"{metrics_server.ws_url}/asok/green/live", header=[f"Authorization: Bearer {TOKEN}"], timeout=5
    )
    try:
        for i in range(10):
            client.send(f"m{i}")
            assert client.recv() == f"m{i}"
        route = (("route", "/echo"),)
        samples = scrape(metrics_server)
        calls = samples["asok_green_handler_seconds_count"][route]
        seconds = samples["asok_green_handler_seconds_sum"][route]
        assert calls >= 10
        deadline = time.monotonic() + 10
        row = None
        while time.monotonic() < deadline:
            snapshot = json.loads(dashboard.recv())
            row = next(h for h in snapshot["handlers"] if h["pattern"] == "/echo")
            if row["calls"] == calls:
                break
        assert row["calls"] == calls and row["seconds"] == pytest.approx(seconds, rel=1e-9)
    finally:
        client.close()
        dashboard.close()


def test_refused_handshakes_are_counted_by_cause(metrics_server):
    before = scrape(metrics_server)["asok_green_handshakes_refused_total"]
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(metrics_server, "/chat/x", origin="https://evil.example")
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(metrics_server, "/no/such/route")
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(metrics_server, "/chat/x/")
    after = scrape(metrics_server)["asok_green_handshakes_refused_total"]
    for cause in ("origin", "route", "path"):
        assert after[(("cause", cause),)] == before[(("cause", cause),)] + 1, cause
    assert after[(("cause", "limit"),)] == before[(("cause", "limit"),)]


def test_users_online_and_rooms(metrics_server):
    cookies = login(metrics_server.url, "alice")
    client = ws_connect(metrics_server, "/asok/live", cookies=cookies)
    try:
        wait_for_sample(metrics_server, "asok_green_users_online", {}, 1)
        client.send('{"op": "join_room", "room": "model:Post"}')
        wait_for_sample(metrics_server, "asok_green_rooms", {}, 1)
    finally:
        client.close()
    wait_for_sample(metrics_server, "asok_green_users_online", {}, 0)


def test_metrics_disabled_leaves_the_path_to_the_app(project, tmp_path):
    server = asok_serve(project, tmp_path, env=project_env(METRICS_ENABLED="false"))
    try:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "/metrics", timeout=5)
        assert missing.value.code == 404
    finally:
        server.stop()


def test_gunicorn_with_two_workers_and_a_metrics_directory_reports_both(project, tmp_path):
    from tests.test_gunicorn import gunicorn

    shared = tmp_path / "metrics"
    shared.mkdir()
    env = project_env(METRICS_TOKEN=TOKEN, ASOK_GREEN_METRICS_DIR=str(shared))
    server = gunicorn(project, tmp_path, "-w", "2", env=env)
    clients = []
    try:
        wait_for_sample(server, "asok_green_processes", {}, 2, timeout=20)
        clients = [ws_connect(server, "/chat/g") for _ in range(4)]
        wait_for_sample(server, "asok_green_connections", {"route": "/chat/[room]"}, 4)
        wait_for_sample(server, "asok_websocket_active_connections", {}, 4)
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_without_prometheus_client_one_line_says_so_and_asoks_gauge_still_counts(project, tmp_path):
    # A package that fails to import stands for prometheus_client not being installed.
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('prometheus_client is not installed')\n")
    path = os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])
    server = asok_serve(project, tmp_path, env=project_env(METRICS_TOKEN=TOKEN, PYTHONPATH=path))
    client = None
    try:
        client = ws_connect(server, "/chat/solo")
        wait_for_sample(server, "asok_websocket_active_connections", {}, 1)
        assert "asok_green_connections" not in scrape(server)
        client.send("still served")
        assert "still served" in client.recv()
        assert server.log().count("asok_green's metrics are off") == 1
    finally:
        if client is not None:
            client.close()
        server.stop()
