"""A session store that fails is not a logout: real outages against a real server.

Each test logs in for real, opens a logged-in socket, then breaks the store the
way production does (a session directory the server may not read, a Redis that
stops, a SQLite file another process holds locked) and checks that sockets stay
open and that logged-in handshakes are told to come back (503) instead of being
served as guests. Re-checks run every 0.3 s here; the server counts them in
``ws.stats`` (``session_rechecks_unknown``), which the tests read over ``/stats``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time

import pytest
import websocket

from tests.asok_project import fetch, login, make_project, project_env
from tests.conftest import BIN, ServerProcess, asok_serve, free_port

pytestmark = pytest.mark.timeout(110)

FAULTS_WSGI = """
@ws.on("/me")
def me(conn, message):
    conn.send(conn.user.name if conn.user else "guest")


@ws.on("/stats")
def stats(conn, message):
    conn.send_json({"stats": dict(ws.stats)})
"""

OUTAGE = "session lookups (session store or user database) failing"
RECOVERED = "session lookups (session store or user database) back after"
CHECKS = {"WS_SESSION_CHECK_INTERVAL": "0.3"}


def answer(client, message: str = "?", timeout: float = 10) -> str:
    """Send ``message``; the next reply that is not a JSON broadcast (presence)."""
    client.send(message)
    client.settimeout(timeout)
    while True:
        reply = client.recv()
        if not reply.startswith('{"op"'):
            return reply


def wait_for_stat(client, name: str, at_least: int, timeout: float = 60) -> int:
    """Poll ``/stats`` until ``ws.stats[name]`` reaches ``at_least``."""
    deadline = time.monotonic() + timeout
    value = 0
    while time.monotonic() < deadline:
        value = json.loads(answer(client))["stats"].get(name, 0)
        if value >= at_least:
            return value
        time.sleep(0.1)
    raise AssertionError(f"stats[{name!r}] stayed at {value}, wanted {at_least}")


def next_close_code(client, timeout: float = 10) -> int:
    """Skip messages until the server's close frame; its code."""
    client.settimeout(timeout)
    while True:
        opcode, frame = client.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


@pytest.fixture
def clients(clients):
    """conftest's clients, with room for a handshake the server takes seconds to answer."""
    clients.timeout = 30
    return clients


def serve_bound_by_file_permissions(project, tmp, env) -> ServerProcess:
    """``asok serve --gevent``, run so that file permissions bind it even as root.

    Root reads any file whatever its mode; without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (dropped by setpriv) it is held to the mode bits, as a
    deployed server's user is.
    """
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    port = free_port()
    argv = [*prefix, str(BIN / "asok"), "serve", "--gevent", "--port", str(port)]
    return ServerProcess(argv, project, env, port, tmp / f"server-{port}.log")


@pytest.fixture(scope="module")
def faults_project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("faults"), extra_wsgi=FAULTS_WSGI)


def test_unreadable_session_directory_keeps_sockets_open_until_a_real_logout(faults_project, tmp_path, clients):
    env = project_env(SESSION_BACKEND="file", **CHECKS)
    sockets = serve_bound_by_file_permissions(faults_project, tmp_path, env)
    # Another process on the same file store, where the user logs in and out.
    pages = asok_serve(faults_project, tmp_path, env=env)
    sessions = faults_project / ".asok" / "sessions"
    try:
        cookies = login(pages.url, "alice")
        tab = clients.connect(sockets, "/me", cookies=cookies)
        stats = clients.connect(sockets, "/stats")
        assert answer(tab) == "alice"
        sessions.chmod(0)
        try:
            sockets.wait_for_log(OUTAGE, timeout=30)
            wait_for_stat(stats, "session_rechecks_unknown", 3)
            assert answer(tab) == "alice"
        finally:
            sessions.chmod(0o755)
        sockets.wait_for_log(RECOVERED, timeout=30)
        assert sockets.log().count(OUTAGE) == 1
        assert answer(tab) == "alice"
        assert fetch(pages.url + "/logout", cookies=cookies).status in (200, 302)
        assert next_close_code(tab) == 1008
    finally:
        sessions.chmod(0o755)
        clients.close_all()
        sockets.stop()
        pages.stop()


def test_redis_session_store_stopped_then_restarted_keeps_sockets_and_sessions(
    faults_project, tmp_path, own_redis, clients
):
    server = asok_serve(
        faults_project, tmp_path, env=project_env(SESSION_BACKEND="redis", ASOK_REDIS_URL=own_redis.url, **CHECKS)
    )
    try:
        cookies = login(server.url, "alice")
        tab = clients.connect(server, "/me", cookies=cookies)
        stats = clients.connect(server, "/stats")
        assert answer(tab) == "alice"
        assert own_redis.command("SAVE") == "+OK"
        own_redis.stop()
        try:
            server.wait_for_log(OUTAGE, timeout=30)
            wait_for_stat(stats, "session_rechecks_unknown", 3)
            assert answer(tab) == "alice"
        finally:
            own_redis.start()
        server.wait_for_log(RECOVERED, timeout=30)
        assert server.log().count(OUTAGE) == 1
        assert answer(tab) == "alice"
        assert answer(clients.connect(server, "/me", cookies=cookies)) == "alice"
    finally:
        clients.close_all()
        server.stop()


def test_unreadable_user_database_at_the_handshake_gets_503_not_a_guest(faults_project, tmp_path, clients):
    # Asok opens SQLite in WAL mode, where a lock held by another process does not
    # stop readers: a database the server may not open is the outage here.
    server = serve_bound_by_file_permissions(faults_project, tmp_path, project_env(**CHECKS))
    database = faults_project / "db.sqlite3"
    mode = database.stat().st_mode
    try:
        cookies = login(server.url, "alice")
        database.chmod(0)
        try:
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                clients.connect(server, "/me", cookies=cookies)
            # A forged cookie needs no lookup: still a guest.
            assert answer(clients.connect(server, "/me", cookies={"asok_session": "1:x." + "0" * 64})) == "guest"
        finally:
            database.chmod(mode)
        assert refused.value.status_code == 503
        assert refused.value.resp_headers.get("retry-after") == "5"
        server.wait_for_log(OUTAGE)
        assert answer(clients.connect(server, "/me", cookies=cookies)) == "alice"
        server.wait_for_log(RECOVERED)
    finally:
        database.chmod(mode)
        clients.close_all()
        server.stop()
