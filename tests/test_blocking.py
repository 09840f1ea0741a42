"""Blocking I/O off the loop: a slow database stalls only the call that waits on it.

End to end, the slow operation waits on a lock this test holds (a SQLite write
lock, or an flock on a gate file) and the test releases it only after another
client's round trips have completed: had the operation run on the loop, those
round trips could not complete and the test would fail on its receive deadline.
The unit tests at the end drive ``asok_green.blocking`` in this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time

import gevent
import pytest

import asok_green
from asok_green.server import offload
from tests.asok_project import login, make_project, project_env
from tests.conftest import asok_serve

pytestmark = pytest.mark.timeout(90)

BLOCKING_WSGI = """
import fcntl as _fcntl
import pathlib as _pathlib
import sqlite3 as _sqlite3

import asok_green as _green
from asok.orm import MODELS_REGISTRY as _MODELS


def _touch_first_user():
    db = _sqlite3.connect("db.sqlite3", timeout=60)
    try:
        updated = db.execute("UPDATE users SET name = name WHERE id = 1").rowcount
        db.commit()
        return updated
    finally:
        db.close()


@ws.on("/slow-write")
def slow_write(conn, message):
    conn.send("started")
    conn.send(f"updated {_green.blocking(_touch_first_user)}")


@ws.on("/find")
def find(conn, message):
    user = _green.blocking(_MODELS["User"].find, id=int(message))
    conn.send(user.name)


@ws.on("/me")
def me(conn, message):
    conn.send(conn.user.name if conn.user else "guest")


class _GatedUsers:
    \"\"\"The User model; its lookups wait while the test holds an flock on lookup.gate.\"\"\"

    @staticmethod
    def find(**where):
        gate = _pathlib.Path("lookup.gate")
        if gate.exists():
            _pathlib.Path("lookup.started").touch()
            with open(gate, "rb") as held:
                _fcntl.flock(held, _fcntl.LOCK_SH)
        return _MODELS["User"].find(**where)


_MODELS["GatedUser"] = _GatedUsers
ws.auth_model = "GatedUser"
"""


@pytest.fixture(scope="module")
def blocking_project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("blocking"), extra_wsgi=BLOCKING_WSGI)


@pytest.fixture(scope="module")
def blocking_server(blocking_project, tmp_path_factory):
    proc = asok_serve(blocking_project, tmp_path_factory.mktemp("blocking-logs"), env=project_env())
    yield proc
    proc.stop(timeout=20)


@pytest.fixture
def clients(clients):
    """conftest's clients, with room for a handshake that waits on a slow lookup."""
    clients.timeout = 10
    return clients


@contextlib.contextmanager
def write_locked(database):
    """Hold SQLite's write lock on ``database``: other writers wait until it is released."""
    db = sqlite3.connect(database, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def reply(client) -> str:
    """The next message that is not a presence broadcast (every path receives those)."""
    while (message := client.recv()).startswith('{"op": "broadcast"'):
        pass
    return message


def round_trips(client, count: int = 5) -> None:
    for i in range(count):
        client.send(f"ping {i}")
        assert reply(client) == f"ping {i}"


def wait_for_file(path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not created in time"
        time.sleep(0.02)


def database_files_open(server) -> int:
    fd_dir = f"/proc/{server.proc.pid}/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"{fd_dir}/{fd}"))
    return sum("db.sqlite3" in target for target in targets)


def test_a_handler_waiting_on_a_locked_database_through_blocking_stalls_nobody_else(
    blocking_server, blocking_project, clients
):
    echo = clients.connect(blocking_server, "/echo")
    slow = clients.connect(blocking_server, "/slow-write", timeout=60)
    with write_locked(blocking_project / "db.sqlite3"):
        slow.send("go")
        assert reply(slow) == "started"
        # The handler now waits for the write lock this test holds.
        round_trips(echo)
    assert reply(slow) == "updated 1"


def test_a_slow_user_lookup_at_the_handshake_stalls_nobody_else(blocking_server, blocking_project, clients):
    cookies = login(blocking_server.url, "alice")
    echo = clients.connect(blocking_server, "/echo")
    gate, started = blocking_project / "lookup.gate", blocking_project / "lookup.started"
    gate.touch()
    handshake: dict = {}
    try:
        with open(gate, "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            waiting = threading.Thread(
                target=lambda: handshake.update(
                    client=clients.connect(blocking_server, "/me", cookies=cookies, timeout=30)
                )
            )
            waiting.start()
            wait_for_file(started)
            # The handshake's user lookup now waits for the gate this test holds.
            round_trips(echo)
        waiting.join(30)
    finally:
        gate.unlink()
        started.unlink(missing_ok=True)
    handshake["client"].send("who")
    assert reply(handshake["client"]) == "alice"


def test_blocking_calls_leave_no_database_file_open(blocking_server, clients):
    finder = clients.connect(blocking_server, "/find")
    for _ in range(30):
        finder.send("1")
        assert reply(finder) == "alice"
    assert database_files_open(blocking_server) <= 3


# --- asok_green.blocking in this process ---


def test_blocking_returns_what_fn_returns_computed_in_another_thread():
    assert asok_green.blocking(threading.get_ident) != threading.get_ident()
    assert asok_green.blocking(divmod, 7, 2) == (3, 1)
    assert asok_green.blocking(dict, a=1) == {"a": 1}


def test_blocking_reraises_what_fn_raises():
    def fail():
        raise LookupError("no such row")

    with pytest.raises(LookupError, match="no such row"):
        asok_green.blocking(fail)


def test_other_greenlets_run_while_a_blocking_call_waits():
    released = threading.Event()
    ticks = []

    def ticker():
        for i in range(5):
            ticks.append(i)
            gevent.sleep(0)
        released.set()

    gevent.spawn(ticker)
    # Inline, this wait would hold the only thread and the ticker could never set the event.
    assert asok_green.blocking(released.wait, 10)
    assert ticks == [0, 1, 2, 3, 4]


def test_blocking_inside_blocking_runs_in_place():
    def outer():
        return asok_green.blocking(threading.get_ident) == threading.get_ident()

    assert asok_green.blocking(outer)


def test_call_on_loop_from_a_worker_runs_in_the_loops_thread():
    ran_in = []
    loop_thread = threading.get_ident()

    def in_worker():
        offload.call_on_loop(lambda: ran_in.append(threading.get_ident()))
        return threading.get_ident()

    assert asok_green.blocking(in_worker) != loop_thread
    with gevent.Timeout(10):
        while not ran_in:
            gevent.sleep(0.001)
    assert ran_in == [loop_thread]


def test_pool_size_comes_from_the_environment():
    assert offload.pool_size({}) == offload.DEFAULT_THREADS == 10
    assert offload.pool_size({"WS_BLOCKING_THREADS": "3"}) == 3
    assert offload.pool_size({"WS_BLOCKING_THREADS": "0"}) == 1


def test_a_model_event_fired_inside_blocking_is_broadcast_from_the_loops_thread():
    from asok.events import events

    from asok_green import WebSocketServer
    from asok_green.bridge import live as ops

    class Order:
        id = 7

    hub = WebSocketServer()
    sent_from = []
    hub.broadcast_to_json = lambda room, message, exclude=None: sent_from.append((room, threading.get_ident()))
    ops.install_model_relay(hub)
    loop_thread = threading.get_ident()
    asok_green.blocking(events.emit, "model:created", Order())
    with gevent.Timeout(10):
        while len(sent_from) < 2:
            gevent.sleep(0.001)
    assert sent_from == [("model:Order", loop_thread), ("model:Order:7", loop_thread)]
