"""Nothing a handler or a background job does can leak a socket, a slot, or stop the server.

Real `asok serve --gevent` processes: handlers that raise (even exceptions that
pass through ``except Exception``) still end their connection whole: it is
unregistered, its socket closed (counted in /proc/PID/fd), its slot given back.
Many handshakes at once never hold more than ``WS_MAX_CONNECTIONS``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections import Counter
from types import SimpleNamespace

import gevent
import pytest
import websocket

from asok_green.server import keepalive
from tests.asok_project import cookie_header, login, make_project, project_env
from tests.cluster_support import RedisServer, recv_json
from tests.conftest import INTROSPECTION, asok_serve, ws_connect
from tests.raw_client import handshake_request

pytestmark = pytest.mark.timeout(90)

FAULTY_HANDLERS = """
import gevent as _gevent


@ws.on_connect("/connect-raises")
def connect_raises(conn):
    raise RuntimeError("on_connect bug")


@ws.on_disconnect("/disconnect-raises")
def disconnect_raises(conn):
    raise RuntimeError("on_disconnect bug")


@ws.on_connect("/connect-times-out")
def connect_times_out(conn):
    raise _gevent.Timeout()


#: The app keeps its own list of connections, as apps do, and fails to update it.
_tracked = []


@ws.on_connect("/disconnect-times-out")
def track(conn):
    _tracked.append(conn)


@ws.on_disconnect("/disconnect-times-out")
def disconnect_times_out(conn):
    # A gevent.Timeout is a BaseException: it passes through `except Exception`.
    raise _gevent.Timeout()
    _tracked.remove(conn)
"""

FAULTY_PATHS = ("/connect-raises", "/disconnect-raises", "/connect-times-out", "/disconnect-times-out")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("faulty"), extra_wsgi=INTROSPECTION + FAULTY_HANDLERS)
    proc = asok_serve(project, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections(server) -> int:
    """How many connections ``server`` holds, not counting the asking one; -1 if it has no slot to ask."""
    try:
        client = ws_connect(server, "/introspect")
    except websocket.WebSocketBadStatusException:
        return -1
    client.send("{}")
    count = recv_json(client, lambda m: "connections" in m)["connections"]  # presence broadcasts may come first
    client.close()
    return count - 1  # not counting the asking client


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def open_and_close(server, path: str) -> None:
    client = ws_connect(server, path)
    client.close(timeout=2)


def test_handlers_that_raise_leak_no_socket_and_no_slot(faulty):
    pid = faulty.proc.pid
    for path in FAULTY_PATHS:  # warm up: imports, logs, database handles
        open_and_close(faulty, path)
    wait_for(lambda: connections(faulty) == 0, "every connection ended after warm-up")
    time.sleep(0.2)
    baseline = open_fds(pid)

    for _ in range(10):
        for path in FAULTY_PATHS:
            open_and_close(faulty, path)

    wait_for(lambda: connections(faulty) == 0, "the connection count back to 0")
    wait_for(lambda: open_fds(pid) <= baseline, f"open files back to {baseline} (now {open_fds(pid)})")
    echo = ws_connect(faulty, "/echo")
    echo.send("still serving")
    assert echo.recv() == "still serving"
    echo.close()
    log = faulty.log()
    assert "on_connect bug" in log and "on_disconnect bug" in log


@pytest.fixture(scope="module")
def session_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("sessions"))
    yield server
    server.stop()


def test_many_simultaneous_handshakes_never_exceed_max_connections(session_redis, tmp_path):
    """Sessions in Redis: each handshake yields while its session loads, so all are in flight at once."""
    project = make_project(tmp_path / "project", extra_wsgi=INTROSPECTION)
    env = project_env(WS_MAX_CONNECTIONS="3", SESSION_BACKEND="redis", REDIS_URL=session_redis.url)
    proc = asok_serve(project, tmp_path, env=env)
    try:
        cookie = f"Cookie: {cookie_header(login(proc.url, 'alice'))}\r\n"
        host = f"127.0.0.1:{proc.port}"
        socks = [socket.create_connection(("127.0.0.1", proc.port), timeout=10) for _ in range(30)]
        request = handshake_request("/echo", host, f"http://{host}", cookie)
        for sock in socks:
            sock.sendall(request)
        statuses = []
        for sock in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            statuses.append(int(head.split(b" ", 2)[1]) if head else None)
        counted = Counter(statuses)
        assert counted[101] <= 3, counted
        assert counted[101] + counted[503] == 30, counted
        assert counted[101] == 3, counted
        for sock in socks:
            sock.close()
        wait_for(lambda: connections(proc) == 0, "every connection ended")

        # Handshakes dropped (reset) while their session loads give their slots back.
        for _ in range(3):
            dropped = [socket.create_connection(("127.0.0.1", proc.port), timeout=10) for _ in range(10)]
            for sock in dropped:
                sock.sendall(request)
            for sock in dropped:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        wait_for(lambda: connections(proc) == 0, "every connection ended after the resets")
        held = []

        def hold_one_more() -> bool:
            try:
                held.append(ws_connect(proc, "/echo"))
            except websocket.WebSocketBadStatusException:
                pass  # a dropped handshake may still hold its slot for a moment
            return len(held) == 3

        wait_for(hold_one_more, "three slots free again")
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_connect(proc, "/echo")
        assert refused.value.status_code == 503
        for client in held:
            client.close()
    finally:
        proc.stop()


class FlakyServer:
    """A server whose first sweep raises: the keep-alive loop must log it and go on."""

    def __init__(self):
        self.limits = SimpleNamespace(ping_interval=0.02, ping_timeout=0.02)
        self.stats: Counter = Counter()
        self.sweeps = 0

    def connections(self) -> list:
        self.sweeps += 1
        if self.sweeps == 1:
            raise RuntimeError("registry bug")
        return []


def test_keepalive_logs_a_failed_sweep_and_goes_on(caplog):
    server = FlakyServer()
    with caplog.at_level(logging.ERROR, logger="asok_green"):
        job = gevent.spawn(keepalive.run, server)
        try:
            with gevent.Timeout(10, AssertionError("keep-alive stopped sweeping")):
                while server.sweeps < 3:
                    gevent.sleep(0.01)
            assert not job.dead
        finally:
            job.kill()
    assert "registry bug" in caplog.text
