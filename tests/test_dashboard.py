"""The live dashboard: its snapshot (pure), who may open it, and its WebSocket of snapshots.

The unit tests drive :func:`asok_green.ops.overview.build_snapshot` with a real
state core and route table. The end-to-end tests run ``asok serve --gevent`` on
the test project and open the page and its socket as a token holder, an admin
(alice), a logged-in non-admin (bob) and a stranger.
"""

from __future__ import annotations

import json
import signal
import struct
import time
from collections import Counter
from types import SimpleNamespace

import gevent
import pytest
import websocket

from asok_green.core import state as st
from asok_green.core.node import SINGLE_PROCESS
from asok_green.core.refusals import RefusalLog, refusal_cause
from asok_green.core.routing import RouteTable
from asok_green.core.timing import HandlerTimes
from asok_green.ops.dashboard import Publisher, presented_token, resolve_settings
from asok_green.ops.overview import build_snapshot
from tests.asok_project import cookie_header, fetch, login, project_env
from tests.conftest import asok_serve, ws_connect

TOKEN = "dashboard-test-token-3f9c"

# -- the snapshot builder (pure) -------------------------------------------------------


def echo(conn, message):
    """A message handler for the unit tests' routes."""


def chat(conn, message):
    """Another message handler."""


def greet(conn):
    """A connect handler."""


def make_hub(node=SINGLE_PROCESS) -> SimpleNamespace:
    """What the snapshot reads of a hub: counters, the state core, routes, node and handler times."""
    routes = RouteTable()
    routes.route("/echo").on_message = echo
    routes.route("/chat/[room]").on_message = chat
    routes.route("/chat/[room]").on_connect = greet
    state = st.HubState()
    return SimpleNamespace(
        stats=Counter(),
        state=state,
        routes=routes,
        node=node,
        handler_times=HandlerTimes(),
        match=routes.match,
        connections=state.connections,
    )


def open_conn(hub, name: str, path: str, user=None) -> str:
    hub.state.open(name, path, user, 1000)
    return name


def test_snapshot_of_an_idle_hub_is_empty_and_json_able():
    snap = build_snapshot(make_hub(), now=10.0, refusals=RefusalLog())
    assert snap["connections"] == 0
    assert snap["rooms"] == [] and snap["room_count"] == 0
    assert snap["online"] == {"count": 0, "here": 0, "first": []}
    assert snap["rates"] == {"messages_in": 0.0, "messages_out": 0.0, "slow_consumers": 0.0, "handler_ms": 0.0}
    assert snap["nodes"] == [
        {"id": "this process", "self": True, "users": 0, "connections": 0, "rooms": 0, "redis": None}
    ]
    assert json.loads(json.dumps(snap)) == snap


def test_snapshot_counts_connections_by_route_pattern_and_rooms_by_members():
    hub = make_hub()
    open_conn(hub, "a", "/chat/x", user=1)
    open_conn(hub, "b", "/chat/y", user=2)
    open_conn(hub, "c", "/echo", user=1)
    open_conn(hub, "d", "/echo")
    hub.state.join("a", "/chat/x", "lobby", 1)
    hub.state.join("c", "/echo", "lobby", 1)
    hub.state.join("b", "/chat/y", "lobby", 2)
    hub.state.join("b", "/chat/y", "quiet", 2)
    snap = build_snapshot(hub, now=1.0, refusals=RefusalLog())
    assert snap["connections"] == 4
    by_pattern = {row["pattern"]: row["connections"] for row in snap["handlers"]}
    assert by_pattern == {"/echo": 2, "/chat/[room]": 2}
    assert snap["rooms"] == [
        {"room": "lobby", "connections": 3, "users": 2},
        {"room": "quiet", "connections": 1, "users": 1},
    ]
    assert snap["online"]["count"] == 2 and sorted(snap["online"]["first"]) == [1, 2]


def test_snapshot_limits_the_rooms_and_user_ids_it_carries():
    hub = make_hub()
    for i in range(30):
        open_conn(hub, f"c{i}", "/echo", user=i)
        hub.state.join(f"c{i}", "/echo", f"room{i}", i)
    snap = build_snapshot(hub, now=1.0, refusals=RefusalLog(), max_rooms=5, max_users=7)
    assert snap["room_count"] == 30 and len(snap["rooms"]) == 5
    assert snap["online"]["count"] == 30 and len(snap["online"]["first"]) == 7


def test_rates_come_from_the_previous_snapshot():
    hub = make_hub()
    first = build_snapshot(hub, now=100.0, refusals=RefusalLog())
    for _ in range(30):
        hub.handler_times.handled(echo, 0.002)
    for _ in range(10):
        hub.handler_times.handled(greet, 0.004)
    hub.stats["messages_sent"] += 90
    hub.stats["slow_consumers_closed"] += 4
    second = build_snapshot(hub, now=102.0, previous=first, refusals=RefusalLog())
    assert second["rates"]["messages_in"] == pytest.approx(15.0)  # 30 echo messages in 2 s; connects are not messages
    assert second["rates"]["messages_out"] == pytest.approx(45.0)
    assert second["rates"]["slow_consumers"] == pytest.approx(2.0)
    assert second["rates"]["handler_ms"] == pytest.approx(100.0 / 40)
    rows = {row["pattern"]: row for row in second["handlers"]}
    assert rows["/echo"]["calls"] == 30 and rows["/echo"]["recent_ms"] == pytest.approx(2.0)
    assert rows["/chat/[room]"]["calls"] == 10 and rows["/chat/[room]"]["mean_ms"] == pytest.approx(4.0)
    assert second["totals"]["slow_consumers"] == 4


def test_cluster_nodes_show_users_per_node_and_the_redis_link():
    node = SimpleNamespace(distributed=True, node_id="n-self", connected=False)
    hub = make_hub(node)
    open_conn(hub, "a", "/echo", user=1)
    hub.state.node_synced("n-other", [2, 3], [("lobby", 2)])
    snap = build_snapshot(hub, now=1.0, refusals=RefusalLog())
    assert snap["nodes"] == [
        {"id": "n-self", "self": True, "users": 1, "connections": 1, "rooms": 0, "redis": "down"},
        {"id": "n-other", "self": False, "users": 2, "connections": None, "rooms": 1, "redis": "up"},
    ]
    assert snap["online"] == {"count": 3, "here": 1, "first": [1, 2, 3]}
    assert snap["rooms"] == [{"room": "lobby", "connections": 0, "users": 1}]
    node.connected = True
    assert build_snapshot(hub, now=2.0, refusals=RefusalLog())["nodes"][0]["redis"] == "up"


@pytest.mark.parametrize(
    ("status", "reason", "cause"),
    [
        (403, "origin 'https://evil.example' is not allowed", "origin"),
        (403, "forbidden: the dashboard is for admins", "auth"),
        (404, "no WebSocket route matches /x", "route"),
        (503, "too many WebSocket connections", "capacity"),
        (503, "session store unavailable, try again", "auth"),
        (400, "missing Sec-WebSocket-Key", "handshake"),
        (405, "a WebSocket handshake must be a GET", "handshake"),
    ],
)
def test_refusal_causes(status, reason, cause):
    assert refusal_cause(status, reason) == cause


def test_refusal_log_keeps_counts_and_a_bounded_ring_without_raw_paths():
    log = RefusalLog(size=3)
    hub = make_hub()
    for i in range(5):
        log.note_handshake(SimpleNamespace(status=404, reason="no route"), [hub], f"/secret-{i}")
    log.note_handshake(SimpleNamespace(status=403, reason="origin"), [hub], "/chat/private-room")
    view = log.view()
    assert view["by_cause"] == {"route": 5, "origin": 1}
    assert len(view["recent"]) == 3
    assert view["recent"][0]["cause"] == "origin" and view["recent"][0]["pattern"] == "/chat/[room]"
    assert view["recent"][1]["pattern"] is None
    assert "secret" not in json.dumps(view) and "private-room" not in json.dumps(view)


def test_settings_default_to_on_at_asok_green_path():
    assert resolve_settings({}, {}) == resolve_settings(None, {})
    settings = resolve_settings({}, {})
    assert settings.enabled and settings.path == "/asok/green/" and settings.token is None


def test_settings_from_config_win_over_the_environment():
    environ = {"WS_DASHBOARD_PATH": "/env/", "WS_DASHBOARD_TOKEN": "from-env"}
    settings = resolve_settings({"WS_DASHBOARD_PATH": "ops/board"}, environ)
    assert settings.path == "/ops/board/" and settings.token == "from-env"
    assert not resolve_settings({}, {"WS_DASHBOARD": "0"}).enabled
    assert not resolve_settings({"WS_DASHBOARD": False}, {}).enabled


def test_token_from_bearer_header_or_query():
    assert presented_token({"HTTP_AUTHORIZATION": "Bearer abc"}) == "abc"
    assert presented_token({"QUERY_STRING": "token=xyz&a=1"}) == "xyz"
    assert presented_token({"HTTP_AUTHORIZATION": "Basic abc"}) is None
    assert presented_token({}) is None


def frame_payload(frame: bytes) -> bytes:
    """The payload of one unmasked server frame."""
    size = frame[1] & 0x7F
    return frame[2:] if size < 126 else frame[4:] if size == 126 else frame[10:]


class Tab:
    """A stand-in connection on the dashboard's path: the frames it was handed."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


def test_snapshot_counts_the_dashboards_own_sockets_as_watchers():
    hub = make_hub()
    hub.routes.route("/asok/green/live").on_connect = greet
    open_conn(hub, "w", "/asok/green/live", user=1)
    open_conn(hub, "c", "/echo")
    snap = build_snapshot(hub, now=1.0, refusals=RefusalLog(), watchers="/asok/green/live")
    assert snap["connections"] == 1 and snap["watchers"] == 1 and snap["path_count"] == 1
    assert [row["pattern"] for row in snap["handlers"]] == ["/echo", "/chat/[room]"]
    assert snap["nodes"][0]["connections"] == 1


def test_publisher_runs_only_while_someone_watches():
    hub = make_hub()
    hub.routes.route("/asok/green/live")
    publisher = Publisher(hub, "/asok/green/live", interval=0.01)
    first, second = Tab(), Tab()
    for tab in (first, second):
        open_conn(hub, tab, "/asok/green/live")
        publisher.watch(tab)
        assert len(tab.frames) == 1  # the current snapshot, at once
    running = publisher.running
    assert running is not None
    with gevent.Timeout(10):
        while len(first.frames) < 3:
            gevent.sleep(0.01)
    assert json.loads(frame_payload(first.frames[-1]))["watchers"] == 2
    assert first.frames[2] is second.frames[2]  # encoded once for every watcher
    hub.state.close(first, "/asok/green/live", None)
    hub.state.close(second, "/asok/green/live", None)
    running.join(timeout=5)
    assert running.dead and publisher.running is None


# -- end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """The test project with the dashboard opened by ``TOKEN`` too; sessions re-checked hourly only."""
    env = project_env(WS_DASHBOARD_TOKEN=TOKEN, WS_SESSION_CHECK_INTERVAL="3600")
    proc = asok_serve(project, tmp_path_factory.mktemp("dashboard"), env=env)
    yield proc
    proc.stop()


PAGE = "/asok/green/"


def test_page_with_the_token_as_bearer_or_query(server):
    answer = fetch(server.url + PAGE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 200
    assert "asok_green dashboard" in answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    assert fetch(f"{server.url}{PAGE}?token={TOKEN}").status == 200
    script = fetch(f"{server.url}{PAGE}dashboard.js?token={TOKEN}")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")


def test_page_for_an_admin_session(server):
    answer = fetch(server.url + PAGE, cookies=login(server.url, "alice"))
    assert answer.status == 200 and "dashboard.js" in answer.text


def test_page_refuses_a_logged_in_non_admin(server):
    assert fetch(server.url + PAGE, cookies=login(server.url, "bob")).status == 403


def test_page_refuses_strangers_and_wrong_tokens(server):
    assert fetch(server.url + PAGE).status == 403
    assert fetch(server.url + PAGE, headers={"Authorization": "Bearer nope"}).status == 403
    assert fetch(f"{server.url}{PAGE}?token=nope").status == 403


def test_assets_hold_no_data_and_need_no_token(server):
    script = fetch(f"{server.url}{PAGE}dashboard.js")
    assert script.status == 200 and "new WebSocket" in script.text
    assert fetch(f"{server.url}{PAGE}dashboard.css").status == 200


def test_page_without_slash_redirects_and_unknown_files_are_404(server):
    answer = fetch(f"{server.url}/asok/green?token={TOKEN}")
    assert answer.status == 301 and answer.headers["Location"] == f"{PAGE}?token={TOKEN}"
    assert fetch(f"{server.url}{PAGE}../wsgi.py?token={TOKEN}").status == 404


def next_snapshot(sock, until=lambda s: True, timeout: float = 10.0) -> dict:
    """Read snapshots until one satisfies ``until``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = json.loads(sock.recv())
        if until(last):
            return last
    raise AssertionError(f"no matching snapshot within {timeout}s; last: {last}")


def live(server, cookies=None, origin=None, token=None, path=PAGE):
    """The dashboard's WebSocket, opened with a session, a bearer token, or neither."""
    header = [f"Authorization: Bearer {token}"] if token else []
    if cookies:
        header.append(f"Cookie: {cookie_header(cookies)}")
    return websocket.create_connection(
        f"{server.ws_url}{path}live", origin=origin or server.url, header=header, timeout=5
    )


def test_live_socket_pushes_snapshots_of_connections_rooms_and_users(server):
    alice = login(server.url, "alice")
    watcher = live(server, cookies=alice)
    first = next_snapshot(watcher)
    assert "connections" in first and "rooms" in first
    client = ws_connect(server, "/asok/live", cookies=login(server.url, "bob"))
    client.send(json.dumps({"op": "join_room", "room": "dash-room"}))
    snap = next_snapshot(watcher, lambda s: any(r["room"] == "dash-room" for r in s["rooms"]))
    assert snap["connections"] >= 1
    assert {"room": "dash-room", "connections": 1, "users": 1} in snap["rooms"]
    assert snap["online"]["count"] >= 1
    client.close()
    next_snapshot(watcher, lambda s: all(r["room"] != "dash-room" for r in s["rooms"]))
    watcher.close()


def next_close_code(sock, timeout: float) -> int:
    """Skip snapshots until the server's close frame; its code (AssertionError if none comes in time)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            opcode, frame = sock.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            break
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]
    raise AssertionError(f"no close frame within {timeout}s")


def test_live_socket_closes_1008_when_its_admin_logs_out(server):
    alice = login(server.url, "alice")
    watcher = live(server, cookies=alice)
    next_snapshot(watcher)
    tab = ws_connect(server, "/echo", cookies=alice)
    assert fetch(server.url + "/logout", cookies=alice).status in (200, 302)
    # Sessions are re-checked hourly here: a close within the wait comes from the logout itself.
    assert next_close_code(tab, timeout=20) == 1008
    assert next_close_code(watcher, timeout=20) == 1008


def test_live_socket_closes_1001_with_the_others_when_the_server_stops(project, tmp_path):
    proc = asok_serve(project, tmp_path, env=project_env(WS_DASHBOARD_TOKEN=TOKEN))
    try:
        watcher = live(proc, token=TOKEN)
        assert next_snapshot(watcher)["watchers"] == 1
        client = ws_connect(proc, "/echo")
        proc.proc.send_signal(signal.SIGTERM)
        assert next_close_code(client, timeout=20) == 1001
        assert next_close_code(watcher, timeout=20) == 1001
    finally:
        proc.stop()


def test_live_socket_counts_messages_and_handler_time(server):
    watcher = live(server, token=TOKEN)
    client = ws_connect(server, "/echo")
    for i in range(20):
        client.send(f"m{i}")
        assert client.recv() == f"m{i}"
    snap = next_snapshot(watcher, lambda s: any(h["pattern"] == "/echo" and h["calls"] >= 20 for h in s["handlers"]))
    assert snap["totals"]["messages_in"] >= 20 and snap["totals"]["messages_out"] >= 20
    client.close()
    watcher.close()


def test_live_socket_shows_refusals_by_cause(server):
    watcher = live(server, token=TOKEN)
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(server, "/no/such/route")
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(server, "/echo", origin="https://evil.example")
    snap = next_snapshot(watcher, lambda s: {"route", "origin"} <= set(s["refusals"]["by_cause"]))
    causes = [(r["cause"], r["pattern"]) for r in snap["refusals"]["recent"]]
    assert ("origin", "/echo") in causes and ("route", None) in causes
    watcher.close()


def test_live_socket_refuses_non_admins_strangers_and_other_origins(server):
    for kw in ({}, {"cookies": login(server.url, "bob")}):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            live(server, **kw)
        assert refused.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        live(server, cookies=login(server.url, "alice"), origin="https://evil.example")
    assert refused.value.status_code == 403


def test_live_socket_with_the_token_needs_no_origin_and_the_log_hides_it(server):
    sock = websocket.create_connection(f"{server.ws_url}{PAGE}live?token={TOKEN}", suppress_origin=True, timeout=5)
    assert "connections" in json.loads(sock.recv())
    sock.close()
    fetch(f"{server.url}{PAGE}?token={TOKEN}&x=1")
    log = server.wait_for_log("token=***&x=1")
    assert TOKEN not in log


def test_dashboard_off_leaves_the_path_to_the_app(project, tmp_path):
    proc = asok_serve(project, tmp_path, env=project_env(WS_DASHBOARD="0", WS_DASHBOARD_TOKEN=TOKEN))
    try:
        assert fetch(f"{proc.url}{PAGE}?token={TOKEN}").status == 404
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            live(proc, token=TOKEN)
        assert refused.value.status_code == 404
    finally:
        proc.stop()


def test_dashboard_at_a_configured_path(project, tmp_path):
    proc = asok_serve(project, tmp_path, env=project_env(WS_DASHBOARD_PATH="/ops/ws", WS_DASHBOARD_TOKEN=TOKEN))
    try:
        assert fetch(f"{proc.url}/ops/ws/?token={TOKEN}").status == 200
        assert fetch(f"{proc.url}{PAGE}?token={TOKEN}").status == 404
        sock = live(proc, token=TOKEN, path="/ops/ws/")
        assert "connections" in json.loads(sock.recv())
        sock.close()
    finally:
        proc.stop()


def test_cluster_nodes_users_per_node_and_the_redis_link(project, tmp_path):
    from tests.cluster_support import RedisServer, node_env

    redis = RedisServer(tmp_path)
    nodes = []
    try:
        for _ in range(2):
            node = asok_serve(project, tmp_path, env=node_env(redis, WS_DASHBOARD_TOKEN=TOKEN))
            node.wait_for_log("joined the cluster")
            nodes.append(node)
        here, there = nodes
        watcher = live(here, token=TOKEN)
        client = ws_connect(there, "/asok/live", cookies=login(there.url, "bob"))
        client.send(json.dumps({"op": "join_room", "room": "cluster-room"}))
        snap = next_snapshot(
            watcher, lambda s: any(n["users"] == 1 and n["rooms"] == 1 and not n["self"] for n in s["nodes"])
        )
        this, *others = snap["nodes"]
        assert this["self"] and this["redis"] == "up" and this["users"] == 0 and this["id"] != "this process"
        assert len(others) == 1 and others[0]["redis"] == "up"
        assert {"room": "cluster-room", "connections": 0, "users": 1} in snap["rooms"]
        assert snap["online"]["count"] == 1 and snap["online"]["here"] == 0
        redis.stop()
        next_snapshot(watcher, lambda s: s["nodes"][0]["redis"] == "down", timeout=20)
        client.close()
        watcher.close()
    finally:
        for node in nodes:
            node.stop()
        redis.stop()
