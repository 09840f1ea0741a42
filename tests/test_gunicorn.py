"""`gunicorn -k asok_green.worker.GeventWebSocketWorker wsgi:app`, end to end with a real gunicorn.

One worker serves the test project's pages and WebSockets on gunicorn's port;
two workers with `WS_ADAPTER=redis` act as one server.
"""

from __future__ import annotations

import collections
import signal
import sqlite3

import pytest
import websocket

from tests.asok_project import fetch, login, make_project, project_env
from tests.cluster_support import NODE_ROUTES, presence_of, recv_json, recv_texts
from tests.conftest import BIN, INTROSPECTION, ServerProcess, free_port

pytestmark = pytest.mark.timeout(90)

WORKER_CLASS = "asok_green.worker.GeventWebSocketWorker"


def _no_control_socket() -> list[str]:
    """gunicorn 25+ opens a control socket in ~/.gunicorn by default: not for parallel test runs."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any("--no-control-socket" in (s.cli or ()) for s in KNOWN_SETTINGS) else []


def gunicorn(project, tmp, *options: str, env: dict | None = None) -> ServerProcess:
    """gunicorn with asok_green's worker class serving ``project``'s wsgi:app on a free port."""
    port = free_port()
    argv = [str(BIN / "gunicorn"), "-k", WORKER_CLASS, "-b", f"127.0.0.1:{port}", *_no_control_socket()]
    argv += [*options, "wsgi:app"]
    return ServerProcess(argv, project, env or project_env(), port, tmp / f"gunicorn-{port}.log")


@pytest.fixture(scope="module")
def served(project, tmp_path_factory):
    """The test project under gunicorn, one worker."""
    server = gunicorn(project, tmp_path_factory.mktemp("gunicorn"))
    yield server
    server.stop()


def test_pages_and_websockets_share_gunicorns_port(served, clients):
    page = fetch(served.url + "/")
    assert page.status == 200
    assert f"window.ASOK_WS_PORT = {served.port};" in page.text
    guest = clients.connect(served, "/chat/general")
    alice = clients.connect(served, "/chat/general", cookies=login(served.url, "alice"))
    alice.send("hi")
    assert recv_texts(alice, 1) == ["alice: hi"]
    assert recv_texts(guest, 1) == ["alice: hi"]


def test_handlers_come_from_wsgi_py_with_the_green_server(served, clients):
    client = clients.connect(served, "/introspect", cookies=login(served.url, "bob"))
    client.send("{}")
    info = recv_json(client, lambda m: "class" in m)
    assert info["class"] == "asok_green.server.hub.WebSocketServer"
    assert info["user"] == "bob"


def test_a_page_broadcast_reaches_the_sockets(served, clients):
    listener = clients.connect(served, "/notifications")
    assert listener.recv() == "Connected to notification stream"
    assert fetch(served.url + "/notify?msg=from%20a%20page").text == "sent"
    assert recv_texts(listener, 1) == ["from a page"]


def test_a_refused_handshake_is_answered_and_logged_by_the_worker(served, clients):
    foreign = websocket.WebSocket()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        foreign.connect(served.ws_url + "/echo", origin="https://evil.example", timeout=10)
    assert refused.value.status_code == 403
    assert fetch(served.url + "/").status == 200  # the worker lives on
    echo = clients.connect(served, "/echo")
    echo.send("still here")
    assert echo.recv() == "still here"
    assert "Traceback" not in served.log()  # gunicorn's access logging of the refusal went through


def test_sigterm_closes_websockets_with_1001_and_gunicorn_exits_0(project, tmp_path, clients):
    server = gunicorn(project, tmp_path)
    sockets = [clients.connect(server, "/echo") for _ in range(2)]
    server.proc.send_signal(signal.SIGTERM)
    for client in sockets:
        opcode, frame = client.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1001
        client.send_close()
    # Well inside gunicorn's 30 s graceful timeout: open sockets do not hold the worker.
    assert server.proc.wait(10) == 0


def test_two_workers_with_redis_are_one_server(tmp_path, own_redis, clients):
    project = make_project(tmp_path / "project", extra_wsgi=INTROSPECTION + NODE_ROUTES)
    env = project_env(WS_ADAPTER="redis", WS_REDIS_URL=own_redis.url, WS_PRESENCE_TTL="2", SESSION_BACKEND="file")
    server = gunicorn(project, tmp_path, "-w", "2", "--reuse-port", env=env)
    try:
        by_pid = collections.defaultdict(list)
        for _ in range(40):
            info = clients.node_info(server)
            by_pid[info["pid"]].append(info)
            if len(by_pid) == 2:
                break
        assert len(by_pid) == 2, "one worker never got a connection"
        assert all(info["node"] for infos in by_pid.values() for info in infos), "a worker is not in the cluster"

        listeners = [clients.connect(server, "/fanout") for _ in range(8)]
        listeners[-1].send("to every worker")
        for listener in listeners:
            assert recv_texts(listener, 1) == ["to every worker"]

        with sqlite3.connect(project / "db.sqlite3") as db:
            (alice_id,) = db.execute("SELECT id FROM users WHERE name = 'alice'").fetchone()
        watchers = [clients.connect(server, "/asok/live") for _ in range(4)]
        tab = clients.connect(server, "/chat/x", cookies=login(server.url, "alice"))
        for watcher in watchers:
            assert recv_json(watcher, presence_of(alice_id))["status"] == "online"
        tab.close()
        for watcher in watchers:
            assert recv_json(watcher, presence_of(alice_id))["status"] == "offline"
    finally:
        clients.close_all()
        server.stop()
