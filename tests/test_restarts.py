"""Restarts that drop no one: SIGHUP to ``asok serve --gevent`` (and ``--workers 2``).

A new process takes over the listening socket and, once it serves, the old one
stops accepting, finishes its HTTP requests, closes its WebSockets with 1012
and exits. The tests hammer the port with new HTTP and WebSocket connections
across restarts and count every refused, reset or unanswered one; a broken app
on reload must leave the old process serving.
"""

from __future__ import annotations

import pathlib
import re
import signal
import socket
import struct
import threading
import time

import pytest
import websocket

from tests.asok_project import make_project, project_env
from tests.cluster_support import NODE_ROUTES, node_env
from tests.conftest import BIN, ServerProcess, asok_serve, free_port

#: The seconds over which a replaced process closes its WebSockets (short, so the tests are quick).
DRAIN = "1"

#: /wspid answers any message with the serving process' PID.
PID_ROUTE = """
import os as _os


@ws.on("/wspid")
def wspid(conn, message):
    conn.send(str(_os.getpid()))
"""

PID_PAGE = """
import os


def render(request):
    return request.text(str(os.getpid()))
"""

#: /slow answers once the file slow-release exists in the project; it creates slow-started first.
SLOW_PAGE = """
import os
import time


def render(request):
    open("slow-started", "w").close()
    while not os.path.exists("slow-release"):
        time.sleep(0.02)
    return request.text("slow done")
"""

BROKEN = "\n\ndef broken(:\n"


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout}s")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def serves(server: ServerProcess, pid: int) -> bool:
    """True while ``pid`` is a server process; the first one, ``asok``'s, becomes the restarting parent."""
    if pid != server.proc.pid:
        return alive(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return b"asok_green.process.restarter" not in cmdline.read()


def add_pages(root: pathlib.Path) -> pathlib.Path:
    """Add the /pid and /slow pages to a test project."""
    for name, source in (("pid", PID_PAGE), ("slow", SLOW_PAGE)):
        (root / "src" / "pages" / name).mkdir(parents=True, exist_ok=True)
        (root / "src" / "pages" / name / "page.py").write_text(source)
    return root


@pytest.fixture(scope="module")
def restart_project(tmp_path_factory) -> pathlib.Path:
    """The test project with /pid, /slow and /wspid."""
    return add_pages(make_project(tmp_path_factory.mktemp("restart-project"), extra_wsgi=PID_ROUTE))


@pytest.fixture
def server(restart_project, tmp_path):
    proc = asok_serve(restart_project, tmp_path, env=project_env(WS_DRAIN_SECONDS=DRAIN, WS_SHUTDOWN_TIMEOUT="30"))
    yield proc
    proc.stop()


def http_get(port: int, path: str, timeout: float = 30) -> tuple[int, str]:
    """GET ``path`` on a new connection; (status, body). Raises on a refused, reset or empty answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        raise ConnectionError("the connection closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def http_pid(port: int) -> int:
    """The PID of the process that answers a new HTTP connection."""
    status, body = http_get(port, "/pid")
    assert status == 200, body
    return int(body)


def ws_open(port: int, path: str = "/wspid") -> websocket.WebSocket:
    """A WebSocket to ``path`` on ``port``."""
    return websocket.create_connection(f"ws://127.0.0.1:{port}{path}", origin=f"http://127.0.0.1:{port}", timeout=30)


def ws_pid(conn: websocket.WebSocket) -> int:
    """Ask /wspid which process serves ``conn``."""
    conn.send("?")
    return int(conn.recv())


def close_code(conn: websocket.WebSocket) -> int:
    """Read up to the server's close frame; its code."""
    while True:
        opcode, data = conn.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0]


class Hammer:
    """A thread that opens new HTTP and WebSocket connections in a loop and counts what goes wrong.

    A WebSocket the old process closes with 1012 right after it opened is not
    a failure (its client reconnects); a refused, reset or unanswered
    connection is.
    """

    def __init__(self, port: int):
        self.port = port
        self.http_pids: set[int] = set()
        self.ws_pids: set[int] = set()
        self.failures: list[str] = []
        self.rounds = 0
        self.restart_closes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.http_pids.add(http_pid(self.port))
            except (OSError, AssertionError, ValueError) as exc:
                self.failures.append(f"HTTP: {exc!r}")
            try:
                conn = ws_open(self.port)
                try:
                    self.ws_pids.add(ws_pid(conn))
                except websocket.WebSocketConnectionClosedException:
                    self.restart_closes += 1
                finally:
                    conn.close(timeout=1)
            except (OSError, websocket.WebSocketException, ValueError) as exc:
                self.failures.append(f"WebSocket: {exc!r}")
            self.rounds += 1

    def wait_rounds(self, count: int) -> None:
        """Wait until ``count`` more rounds have been made."""
        target = self.rounds + count
        wait_until(lambda: self.rounds >= target, what=f"{count} rounds of connections", timeout=60)


def restart(server: ServerProcess, hammer: Hammer, serving: int) -> int:
    """SIGHUP, then wait until new connections reach another process than ``serving``; its PID."""
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: http_pid(server.port) != serving, what="a new process serving", timeout=60)
    new = http_pid(server.port)
    wait_until(lambda: not serves(server, serving), what=f"the old process {serving} gone", timeout=60)
    hammer.wait_rounds(5)
    return new


@pytest.mark.timeout(110)
def test_connections_in_a_loop_across_two_restarts_are_never_refused(server):
    first = http_pid(server.port)
    assert first == server.proc.pid
    with Hammer(server.port) as hammer:
        hammer.wait_rounds(5)
        second = restart(server, hammer, first)
        third = restart(server, hammer, second)
    assert hammer.failures == []
    assert len({first, second, third}) == 3
    assert {first, second, third} <= hammer.http_pids | {first}
    assert third in hammer.ws_pids
    assert server.proc.poll() is None, "the PID systemd watches must stay"
    assert not serves(server, first) and not alive(second)
    log = server.log()
    assert log.count("restarted: process") == 2, log


@pytest.mark.timeout(110)
def test_open_websockets_get_1012_and_reconnect_to_the_new_process(server):
    old = http_pid(server.port)
    clients = [ws_open(server.port) for _ in range(6)]
    assert {ws_pid(conn) for conn in clients} == {old}
    server.proc.send_signal(signal.SIGHUP)
    assert [close_code(conn) for conn in clients] == [1012] * len(clients)
    for conn in clients:
        conn.close(timeout=1)
    again = [ws_open(server.port) for _ in range(6)]
    pids = {ws_pid(conn) for conn in again}
    assert len(pids) == 1 and old not in pids
    for conn in again:
        conn.close(timeout=1)
    server.wait_for_log("closing 6 WebSocket(s) with 1012")
    wait_until(lambda: not serves(server, old), what="the old process drained", timeout=60)
    assert server.proc.poll() is None, "the process asok started became the restarting parent"
    assert len({http_pid(server.port) for _ in range(5)} - pids) == 0


@pytest.mark.timeout(110)
def test_a_slow_request_in_flight_completes_across_the_restart(server, restart_project):
    for name in ("slow-started", "slow-release"):
        (restart_project / name).unlink(missing_ok=True)
    old = http_pid(server.port)
    answer: dict = {}

    def slow() -> None:
        try:
            answer["response"] = http_get(server.port, "/slow", timeout=60)
        except OSError as exc:
            answer["error"] = exc

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    wait_until(lambda: (restart_project / "slow-started").exists(), what="the slow view running")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: http_pid(server.port) != old, what="a new process serving", timeout=60)
    assert serves(server, old)  # still draining: it waits for the slow view
    (restart_project / "slow-release").touch()
    thread.join(60)
    assert answer == {"response": (200, "slow done")}
    (restart_project / "slow-release").unlink()


@pytest.mark.timeout(110)
def test_an_app_that_does_not_load_on_reload_leaves_the_old_process_serving(tmp_path):
    project = add_pages(make_project(tmp_path / "project", extra_wsgi=PID_ROUTE))
    wsgi = project / "wsgi.py"
    good = wsgi.read_text()
    server = asok_serve(project, tmp_path, env=project_env(WS_DRAIN_SECONDS=DRAIN))
    try:
        for attempt in (1, 2):  # the process asok started, then the parent it becomes after a restart
            serving = http_pid(server.port)
            wsgi.write_text(good + BROKEN)
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda a=attempt: server.log().count("restart failed") == a, what="restart failed logged")
            assert http_pid(server.port) == serving
            conn = ws_open(server.port)
            assert ws_pid(conn) == serving
            conn.close()
            wsgi.write_text(good)
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda s=serving: http_pid(server.port) != s, what="the fixed app serving", timeout=60)
        assert "keeps serving" in server.log()
        assert "SyntaxError" in server.log()
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def workers_project(tmp_path_factory) -> pathlib.Path:
    """The test project with /pid and the cluster tests' routes."""
    return add_pages(make_project(tmp_path_factory.mktemp("workers-project"), extra_wsgi=PID_ROUTE + NODE_ROUTES))


@pytest.mark.timeout(110)
def test_workers_are_replaced_one_at_a_time_and_no_connection_is_refused(workers_project, redis_server, tmp_path):
    port = free_port()
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(port), "--workers", "2"]
    env = node_env(redis_server, WS_DRAIN_SECONDS=DRAIN)
    server = ServerProcess(argv, workers_project, env, port, tmp_path / "workers.log")
    try:
        server.wait_for_log("with 2 worker processes", timeout=30)
        old = {int(pid) for pid in re.search(r"worker processes \(([\d, ]+)\)", server.log()).group(1).split(", ")}
        with Hammer(port) as hammer:
            hammer.wait_rounds(5)
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: server.log().count("drained and exited") == 2, what="both workers replaced", timeout=90)
            hammer.wait_rounds(10)
        assert hammer.failures == []
        steps = re.findall(r"restarting worker (\d+): (\d+) serves|worker (\d+) drained and exited", server.log())
        # One at a time: each old worker has drained and exited before the next is replaced.
        (first_old, first_new, _), (_, _, first_gone), (second_old, second_new, _), (_, _, second_gone) = steps
        assert (first_gone, second_gone) == (first_old, second_old)
        assert {int(first_old), int(second_old)} == old
        new = {int(first_new), int(second_new)}
        assert not new & old
        assert {http_pid(port) for _ in range(20)} <= new
        assert hammer.http_pids <= old | new
        assert server.stop() == 0
    finally:
        server.stop()


def test_the_drain_schedule_closes_everyone_once_in_order_within_the_period():
    import random

    from asok_green.process.drain import drain_schedule

    for count, seconds in ((1, 10.0), (7, 1.0), (1000, 10.0), (5, 0.0)):
        schedule = drain_schedule(count, seconds, random.Random(count))
        covered = [i for _, start, stop in schedule for i in range(start, stop)]
        assert covered == list(range(count))
        delays = [delay for delay, _, _ in schedule]
        assert delays == sorted(delays) and all(0 <= delay <= seconds for delay in delays)
    assert len(drain_schedule(1000, 10.0, random.Random(1))) == 100
    assert drain_schedule(0, 10.0, random.Random(1)) == []
