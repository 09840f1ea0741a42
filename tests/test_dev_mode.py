"""``asok dev --gevent``: one port, restarted on changes, WebSockets told to reconnect.

A real Asok project is served by ``asok dev --gevent`` started as a process;
the tests edit its files as a developer would and watch what clients see: a
close 1012 (Service Restart) on every open WebSocket, the port accepting all
along, the new code on the next connection, and a syntax error shown (in the
log and as the page) until the next good save. Plain ``asok dev`` still runs
Asok's own server.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from asok_green.process.devserver import environment_without_dotenv, is_watched
from tests import leftovers
from tests.asok_project import make_project, project_env
from tests.conftest import BIN, ServerProcess, free_port, ws_connect
from tests.raw_client import RawClient

CLOSE_SERVICE_RESTART = 1012
READY = "serving http://"

VERSION_ROUTE = """

@ws.on("/version")
def version(conn, message):
    conn.send("{version}")


@ws.on("/env")
def env_value(conn, message):
    import os

    conn.send(os.environ.get(message, "unset"))
"""


def free_port_below_8100() -> int:
    """A free port Asok's own ``asok dev`` accepts: it looks for one from the given port up to 8100 only."""
    for port in range(8000, 8100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 8000-8099 for asok's own dev server")


def asok_dev(project: pathlib.Path, logs: pathlib.Path, *extra: str, port: int | None = None) -> ServerProcess:
    """``asok dev`` (with ``extra`` options) in ``project`` on a free port."""
    port = port or free_port()
    argv = [str(BIN / "asok"), "dev", "--port", str(port), *extra]
    return ServerProcess(argv, project, project_env(), port, logs / f"dev-{port}.log")


def wait_until(check, timeout: float = 30, every: float = 0.1):
    """Call ``check`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        time.sleep(every)


def fetch(url: str, timeout: float = 20) -> tuple[int, str]:
    """Status and body of a GET (an error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def workers_started(server: ServerProcess) -> int:
    """How many worker processes have said they serve."""
    return server.log().count(READY)


def ask(server: ServerProcess, path: str, message: str) -> str:
    """The answer of the handler at ``path`` in the code now served."""
    client = ws_connect(server, path)
    try:
        client.send(message)
        return client.recv()
    finally:
        client.close()


def ask_version(server: ServerProcess) -> str:
    """What the /version handler of the code now served answers."""
    return ask(server, "/version", "?")


def edit(path: pathlib.Path, text: str) -> None:
    """Rewrite ``path`` as an editor saves it."""
    path.write_text(text)


class ConnectLoop(threading.Thread):
    """Connects to the port over and over until stopped, counting connects and refusals."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.connects = 0
        self.refused = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
                self.connects += 1
            except ConnectionRefusedError:
                self.refused += 1
            except OSError:
                pass
            time.sleep(0.02)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> pathlib.Path:
    """A real Asok project whose wsgi.py the tests rewrite."""
    root = make_project(tmp_path_factory.mktemp("devproject"), extra_wsgi=VERSION_ROUTE.format(version="v1"))
    with open(root / ".env", "a") as dotenv:
        dotenv.write("DEV_MARK=at-start\n")
    return root


@pytest.fixture(scope="module")
def dev(project, tmp_path_factory):
    """``asok dev --gevent`` serving the project for the whole module."""
    proc = asok_dev(project, tmp_path_factory.mktemp("devlogs"), "--gevent")
    proc.wait_for_log(READY, timeout=30)
    yield proc
    assert proc.stop() == 0


def test_editing_python_closes_websockets_with_1012_and_serves_the_new_code(dev, project):
    assert ask_version(dev) == "v1"
    raw = RawClient(dev.port)
    assert b" 101 " in raw.upgrade("/chat/general", origin=dev.url)
    started = workers_started(dev)
    loop = ConnectLoop(dev.port)
    loop.start()
    try:
        wsgi = project / "wsgi.py"
        edit(wsgi, wsgi.read_text().replace('conn.send("v1")', 'conn.send("v2")'))
        assert raw.close_code(timeout=30) == CLOSE_SERVICE_RESTART
        wait_until(lambda: workers_started(dev) > started)
        assert ask_version(dev) == "v2"
    finally:
        loop.stop()
        raw.close()
    assert loop.connects > 0
    assert loop.refused == 0, f"{loop.refused} of {loop.connects + loop.refused} connects refused during the restart"
    assert "restarting: closing 1 WebSocket(s) with 1012" in dev.log()


def test_editing_a_template_restarts_too(dev, project):
    raw = RawClient(dev.port)
    assert b" 101 " in raw.upgrade("/chat/general", origin=dev.url)
    started = workers_started(dev)
    page = project / "src/pages/page.html"
    edit(page, page.read_text().replace("Test chat", "Edited chat"))
    try:
        assert raw.close_code(timeout=30) == CLOSE_SERVICE_RESTART
    finally:
        raw.close()
    wait_until(lambda: workers_started(dev) > started)
    status, body = fetch(dev.url + "/")
    assert status == 200 and "Edited chat" in body


def test_editing_dotenv_restarts_with_the_new_values(dev, project):
    # asok's CLI loaded .env into its own environment before starting the dev server.
    assert ask(dev, "/env", "DEV_MARK") == "at-start"
    dotenv = project / ".env"
    started = workers_started(dev)
    edit(dotenv, dotenv.read_text().replace("DEV_MARK=at-start", "DEV_MARK=edited"))
    wait_until(lambda: workers_started(dev) > started)
    assert ask(dev, "/env", "DEV_MARK") == "edited"


def test_syntax_error_shows_the_traceback_and_the_next_good_save_serves_again(dev, project):
    wsgi = project / "wsgi.py"
    good = wsgi.read_text()
    edit(wsgi, good + "\ndef broken(:\n    pass\n")
    log = dev.wait_for_log("SyntaxError", timeout=30)
    assert "wsgi.py" in log and "Traceback" in log
    status, body = wait_until(lambda: (answer := fetch(dev.url + "/")) and answer[0] == 500 and answer)
    assert "SyntaxError" in body
    started = workers_started(dev)
    edit(wsgi, good.replace('conn.send("v2")', 'conn.send("v3")'))
    wait_until(lambda: workers_started(dev) > started)
    assert fetch(dev.url + "/")[0] == 200
    assert ask_version(dev) == "v3"


def test_a_worker_that_dies_is_reported_and_the_next_change_serves_again(dev, project):
    pid = int(re.findall(r"dev worker (\d+) serving", dev.log())[-1])
    os.kill(pid, signal.SIGKILL)
    dev.wait_for_log("the server exited with -9; waiting for a change", timeout=30)
    started = workers_started(dev)
    (project / "src/pages/page.py").touch()
    wait_until(lambda: workers_started(dev) > started)
    assert fetch(dev.url + "/")[0] == 200


def test_plain_asok_dev_still_runs_asoks_own_server(project, tmp_path):
    proc = asok_dev(project, tmp_path, port=free_port_below_8100())
    try:
        assert wait_until(lambda: fetch(proc.url + "/")[0] == 200)
        log = proc.log()
        assert "Starting Asok development server" in log
        assert "asok_green" not in log
    finally:
        # Asok's reloader forks the server and stops it on Ctrl-C only: SIGTERM would leave the server running.
        # Under load the reloader can exit before its forked server does: stop that one too.
        forked = leftovers.children(proc.proc.pid)
        proc.stop(signal.SIGINT)
        leftovers.stop(forked)


@pytest.mark.parametrize(
    ("path", "watched"),
    [
        ("/p/wsgi.py", True),
        ("/p/src/pages/page.html", True),
        ("/p/.env", True),
        ("/p/db.sqlite3", False),
        ("/p/db.sqlite3-journal", False),
        ("/p/src/partials/css/base.css", False),
        ("/p/.env.swp", False),
    ],
)
def test_which_changes_restart_the_server(path, watched):
    assert is_watched(path) is watched


def test_values_copied_from_dotenv_are_left_for_the_server_to_read(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nDEBUG=true\nSECRET_KEY = abc\n")
    environ = {"DEBUG": "true", "SECRET_KEY": "abc", "PATH": "/bin", "HOME": "/root"}
    assert environment_without_dotenv(environ, str(dotenv)) == {"PATH": "/bin", "HOME": "/root"}
    # A value set differently outside .env is the user's: it stays.
    assert environment_without_dotenv({"DEBUG": "false"}, str(dotenv)) == {"DEBUG": "false"}


def asok_like_parser():
    """A parser built in the order Asok's CLI builds its own: extensions first, then the built-in ``dev``."""
    import argparse

    from asok_green.process.cli import register

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    subparsers.add_parser("dev").add_argument("--port", type=int, default=8000)
    return parser


def test_gevent_routes_asok_dev_to_asok_green_and_plain_dev_stays_asoks():
    from asok_green.process.cli import run_asok_dev

    green = asok_like_parser().parse_args(["dev", "--gevent", "--port", "9000", "--certfile", "c.pem"])
    assert (green.command, green.func, green.port, green.certfile) == ("dev --gevent", run_asok_dev, 9000, "c.pem")
    plain = asok_like_parser().parse_args(["dev", "--port", "9000"])
    assert (plain.command, plain.gevent, getattr(plain, "func", None)) == ("dev", False, None)
