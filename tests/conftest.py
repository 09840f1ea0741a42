"""Fixtures that run the real thing: a generated Asok project served by a real process."""

from __future__ import annotations

import gc
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import websocket

from tests.asok_project import cookie_header, make_project, project_env
from tests.leftovers import ProcessWatch, mark_this_run, stop

BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, what: str, details, timeout: float) -> None:
    """Wait until ``proc`` accepts TCP connections on 127.0.0.1:``port``.

    Raises RuntimeError naming ``what``, with ``details()`` (its log), if it
    exits first or does not listen within ``timeout`` seconds (then it is stopped).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{details()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"{what} did not listen within {timeout}s:\n{details()}")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Send ``sig`` to ``proc`` if it still runs, kill it after ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServerProcess:
    """A server started as its users start it, with its output kept in a log file."""

    def __init__(self, argv: list[str], cwd: pathlib.Path, env: dict[str, str], port: int, log: pathlib.Path):
        self.port = port
        self.log_path = log
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        wait_listening(self.proc, self.port, "server", self.log, timeout)

    def log(self) -> str:
        """Everything the server printed so far."""
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 5) -> str:
        """Wait until ``text`` appears in the log; return the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in server log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` and return the exit code (kill after ``timeout``)."""
        code = stop_process(self.proc, sig, timeout)
        self._log_file.close()
        return code


def asok_serve(project: pathlib.Path, tmp: pathlib.Path, *extra: str, env: dict | None = None) -> ServerProcess:
    """``asok serve --gevent`` in ``project`` on a free port."""
    port = free_port()
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(port), *extra]
    return ServerProcess(argv, project, env or project_env(), port, tmp / f"server-{port}.log")


def ws_connect(
    server: ServerProcess, path: str, cookies: dict | None = None, origin: str | None = None, timeout: float = 5, **kw
):
    """A real WebSocket client (websocket-client) connected to ``server``; ``timeout`` for the handshake and reads."""
    header = [f"Cookie: {cookie_header(cookies)}"] if cookies else None
    return websocket.create_connection(
        server.ws_url + path,
        origin=origin or server.url,
        header=header,
        timeout=timeout,
        **kw,
    )


def until_marker(client, is_marker, count: int = 1, timeout: float = 5.0) -> list:
    """What arrives on ``client`` before ``count`` markers (messages for which ``is_marker`` is true) have.

    To show that a message did not arrive, a test sends a marker after the event that
    must not reach ``client``, along a way that delivers it after anything that event
    sent: what came before the markers is all that could have come. Markers are not
    returned; AssertionError if they do not all arrive within ``timeout`` seconds.
    """
    got: list = []
    seen = 0
    deadline = time.monotonic() + timeout
    previous = client.gettimeout()
    try:
        while seen < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{count - seen} marker(s) not received within {timeout}s; got {got}")
            client.settimeout(left)
            try:
                message = client.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if is_marker(message):
                seen += 1
            else:
                got.append(message)
    finally:
        client.settimeout(previous)
    return got


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> pathlib.Path:
    """A real Asok project (wsgi.py with the doc's handlers, SQLite users alice and bob)."""
    return make_project(tmp_path_factory.mktemp("project"), extra_wsgi=INTROSPECTION)


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """The project served by ``asok serve --gevent`` for a whole test module."""
    proc = asok_serve(project, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


#: Routes appended to the test project's wsgi.py, so tests can ask the server about itself.
INTROSPECTION = """
import json as _json


@ws.on("/introspect")
def introspect(conn, message):
    query = _json.loads(message) if message.startswith("{") else {}
    conn.send_json(
        {
            "class": f"{type(ws).__module__}.{type(ws).__name__}",
            "user": conn.user.name if conn.user else None,
            "params": conn.params,
            "path": conn.path,
            "addr": list(conn.addr),
            "origin": conn.headers.get("origin"),
            "online": sorted(ws.get_online_users()),
            "is_online": {str(u): ws.is_user_online(u) for u in query.get("users", [])},
            "connections": len(ws.connections()),
            "on_path": {p: len(ws.connections(p)) for p in query.get("paths", [])},
        }
    )


@ws.on("/exclude")
def exclude_sender(conn, message):
    ws.broadcast("/exclude", message, exclude=conn)


@ws.on("/json")
def json_broadcast(conn, message):
    ws.broadcast_json("/json", {"echo": message})


@ws.room_authorizer
def authorize(conn, room):
    if room.startswith("admin:"):
        return bool(conn.user and conn.user.is_admin)
    return not room.startswith("closed:")
"""


#: The run's :class:`tests.leftovers.ProcessWatch`, in ``config.stash``.
WATCH = pytest.StashKey[ProcessWatch]()


def pytest_configure(config):
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Before any test starts a process: every process of the run inherits the mark.
    config.stash[WATCH] = ProcessWatch(mark_this_run())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Remember during which test each process of the run was started, to name it if it is left."""
    watch = item.config.stash[WATCH]
    watch.current = item.nodeid
    yield
    watch.note_new(item.nodeid)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(request):
    """After the last test: fail the run, naming them, if tests left a process running or a port open.

    The processes left are stopped (SIGTERM, then SIGKILL), so a failed run
    does not leave them behind either.
    """
    yield
    watch = request.config.stash[WATCH]
    watch.note_new(watch.current)
    left = watch.leftovers()
    gc.collect()
    own_ports = watch.new_own_ports()
    if left:
        stop([leftover.pid for leftover in left])
    problems = [f"a process still runs: {leftover}" for leftover in left]
    problems += [f"the test process itself still listens on port {port}" for port in own_ports]
    if problems:
        pytest.fail("the tests left behind:\n  " + "\n  ".join(problems), pytrace=False)


# The fixtures below use tests/cluster_support, which imports this module: imported when used.


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server for the module's cluster nodes (tests/cluster_support.RedisServer)."""
    from tests.cluster_support import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, which it may stop, pause and start again; stopped after the test."""
    from tests.cluster_support import RedisServer

    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def start_nodes(redis_server, tmp_path_factory):
    """``start_nodes(project, count)``: that many nodes of ``project`` in the module's Redis cluster.

    They run until the module ends (tests/cluster_support.start_node).
    """
    from tests.cluster_support import start_node

    logs = tmp_path_factory.mktemp("node-logs")
    started: list[ServerProcess] = []

    def start(project: pathlib.Path, count: int) -> list[ServerProcess]:
        nodes = [start_node(project, logs, redis_server) for _ in range(count)]
        started.extend(nodes)
        return nodes

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def clients():
    """The test's WebSocket clients (tests/cluster_support.Clients), closed when it ends."""
    from tests.cluster_support import Clients

    opened = Clients()
    yield opened
    opened.close_all()


def greenlet_count() -> int:
    """Live gevent greenlets in this process.

    ``type()`` rather than ``isinstance``: the garbage collector also lists weak
    proxies (gql's, for one), and ``isinstance`` on a dead one raises ReferenceError.
    """
    import gevent

    return sum(issubclass(type(o), gevent.Greenlet) and not o.dead for o in gc.get_objects())
