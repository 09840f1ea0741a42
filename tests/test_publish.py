"""``asok_green.publish(stream, message)`` from other processes: a script, a real ``asok worker`` task.

The project's ``/progress/[user]`` paths keep history. A page (``/report``)
queues an Asok task (``tasks.report``, Asok's Redis queue on Debian's
redis-server) that reports its steps with ``asok_green.publish``; ``asok
worker`` runs it. With the SQLite store (one node) the serving process follows
the file and delivers what the worker appended; with Redis (two nodes) the
servers' own script gives the offset and every node delivers it. A resume
client that was cut off while the task ran gets the steps replayed.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from asok_green.client import Backoff, ResumingClient
from asok_green.publishing import publish, store_name
from tests.asok_project import make_project, project_env
from tests.cluster_support import node_env
from tests.conftest import BIN, asok_serve, stop_process, ws_connect
from tests.link_proxy import LinkProxy
from tests.test_restarts import wait_until
from tests.v1_client import V1Client

pytestmark = pytest.mark.timeout(180)

ROUTES = """
@ws.on("/progress/[user]", history=100)
def progress(conn, message):
    ws.broadcast(conn.path, message)


ws.keep_history("room:kept-*", size=100)


@ws.room_authorizer
def any_room(conn, room):
    return True
"""

TASKS = '''
"""The project's background tasks: a report that tells its user how far it got."""

import asok_green
from asok.background import task


@task
def report(user, steps):
    for step in range(1, steps + 1):
        asok_green.publish(f"/progress/{user}", f"{step}/{steps}")
    return steps
'''

REPORT_PAGE = '''
def render(request):
    """/report?user=7&steps=3: queue the report task."""
    import tasks

    tasks.report.delay(request.args.get("user", "0"), int(request.args.get("steps", "3")))
    return request.text("queued")
'''

SCRIPT = """
import sys

import asok_green

for message in sys.argv[2:]:
    print(tuple(asok_green.publish(sys.argv[1], message)))
"""

# -- the function itself ----------------------------------------------------------------------


@pytest.mark.quick
def test_publish_refuses_what_is_no_stream_and_no_message(tmp_path):
    with pytest.raises(ValueError):
        publish("chat/general", "x", path=str(tmp_path / "h.sqlite3"))
    with pytest.raises(TypeError):
        publish("/chat/general", {"not": "text"}, path=str(tmp_path / "h.sqlite3"))
    with pytest.raises(ValueError):
        publish("/chat/general", "x", store="memory")


@pytest.mark.quick
def test_the_store_follows_the_settings(monkeypatch):
    for name in ("WS_HISTORY_STORE", "WS_ADAPTER", "WS_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert store_name() == "sqlite"
    monkeypatch.setenv("WS_REDIS_URL", "redis://127.0.0.1:1/0")
    assert store_name() == "redis"
    monkeypatch.setenv("WS_HISTORY_STORE", "sqlite")
    assert store_name() == "sqlite"


@pytest.mark.quick
def test_offsets_follow_one_another_in_the_file(tmp_path):
    path = str(tmp_path / "history.sqlite3")
    first = publish("/a", "one", path=path)
    second = publish("/a", b"\x00two", path=path)
    assert second.epoch == first.epoch and second.offset == first.offset + 1
    assert publish("room:x", "other", path=path).offset == 1


# -- a real project, a real server, a real worker -----------------------------------------------


@pytest.fixture(scope="module")
def progress_project(tmp_path_factory) -> pathlib.Path:
    root = make_project(tmp_path_factory.mktemp("publish-project"), extra_wsgi=ROUTES)
    (root / "tasks.py").write_text(TASKS)
    (root / "src/pages/report").mkdir(parents=True, exist_ok=True)
    (root / "src/pages/report/page.py").write_text(REPORT_PAGE)
    (root / "publish_script.py").write_text(SCRIPT)
    return root


def run_script(project: pathlib.Path, stream: str, *messages: str, **env: str) -> list[tuple[str, int]]:
    """``python publish_script.py stream messages...`` in the project; where each landed."""
    done = subprocess.run(
        [sys.executable, "publish_script.py", stream, *messages],
        cwd=project,
        env=project_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [eval(line) for line in done.stdout.splitlines()]  # noqa: S307 - our own script's tuples


class Worker:
    """``asok worker`` in the project, on ``redis``'s queue; its output in a log file."""

    def __init__(self, project: pathlib.Path, redis_url: str, log: pathlib.Path, **env: str) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        env = project_env(ASOK_QUEUE_BACKEND="redis", ASOK_REDIS_URL=redis_url, **env)
        self.proc = subprocess.Popen(
            [str(BIN / "asok"), "worker"], cwd=project, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.wait_for("Asok Worker started")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1) -> None:
        wait_until(lambda: self.log().count(text) >= count, what=f"{text!r} in the worker's log", timeout=60)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)
        self._log.close()


def queue_report(port: int, user: str, steps: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/report?user={user}&steps={steps}", timeout=30) as answer:
        assert answer.read() == b"queued"


@pytest.fixture
def sqlite_node(progress_project, redis_server, tmp_path):
    """One node with the SQLite store; Asok's task queue in the test's Redis."""
    env = project_env(ASOK_QUEUE_BACKEND="redis", ASOK_REDIS_URL=redis_server.url)
    node = asok_serve(progress_project, tmp_path, env=env)
    yield node
    node.stop()


def test_a_script_publishes_to_plain_and_v1_clients_of_the_serving_process(progress_project, sqlite_node):
    v1 = V1Client(sqlite_node.ws_url, "/progress/script")
    position = v1.notice("position")
    plain = ws_connect(sqlite_node, "/progress/script")
    plain.ping("registered?")  # answered once the server reads it: the socket is registered by then
    plain.recv_data(control_frame=True)
    try:
        (landed,) = run_script(progress_project, "/progress/script", "from a script")
        message = v1.next()
        assert message == {"s": "/progress/script", "e": position["e"], "o": position["o"] + 1, "d": "from a script"}
        assert landed == (position["e"], position["o"] + 1)
        plain.settimeout(10)
        assert plain.recv() == "from a script"
        plain.send("from a client")  # the server's own broadcast takes the next offset
        assert v1.next()["o"] == position["o"] + 2
        assert plain.recv() == "from a client"
    finally:
        plain.close()
        v1.close()


def test_an_asok_worker_task_reaches_a_resume_client_that_was_away_sqlite(
    progress_project, sqlite_node, redis_server, tmp_path
):
    proxy = LinkProxy(sqlite_node.port)
    worker = Worker(progress_project, redis_server.url, tmp_path / "worker.log")
    try:
        live = ResumingClient(sqlite_node.ws_url + "/progress/7").connect().wait_ready(10)
        away = ResumingClient(f"ws://127.0.0.1:{proxy.port}/progress/7", backoff=Backoff(0.05, 0.2))
        away.connect().wait_ready(10)
        proxy.hold()
        queue_report(sqlite_node.port, "7", 3)
        worker.wait_for("completed")
        assert [live.recv(10).data for _ in range(3)] == ["1/3", "2/3", "3/3"]
        proxy.release()
        assert [away.recv(30).data for _ in range(3)] == ["1/3", "2/3", "3/3"]
        live.close()
        away.close()
    finally:
        worker.stop()
        proxy.close()


@contextlib.contextmanager
def serving_redis_nodes(project: pathlib.Path, redis_server, tmp_path: pathlib.Path) -> Iterator[list]:
    """Two nodes of a Redis cluster serving ``project`` (history in Redis Streams), the task queue on the same Redis."""
    env = node_env(redis_server, ASOK_QUEUE_BACKEND="redis", ASOK_REDIS_URL=redis_server.url)
    nodes = [asok_serve(project, tmp_path, env=env) for _ in range(2)]
    try:
        for node in nodes:
            node.wait_for_log("joined the cluster")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def redis_nodes(progress_project, redis_server, tmp_path):
    """Two nodes of a Redis cluster (history in Redis Streams); the task queue on the same Redis."""
    with serving_redis_nodes(progress_project, redis_server, tmp_path) as nodes:
        yield nodes


def test_an_asok_worker_task_reaches_clients_of_both_nodes_and_one_that_was_away_redis(
    progress_project, redis_nodes, redis_server, tmp_path
):
    first, second = redis_nodes
    proxy = LinkProxy(first.port)
    worker = Worker(progress_project, redis_server.url, tmp_path / "worker.log", **_cluster_env(redis_server))
    plain = ws_connect(second, "/progress/9")
    try:
        away = ResumingClient(f"ws://127.0.0.1:{proxy.port}/progress/9", backoff=Backoff(0.05, 0.2))
        away.connect().wait_ready(10)
        live = ResumingClient(second.ws_url + "/progress/9").connect().wait_ready(10)
        proxy.hold()
        queue_report(first.port, "9", 3)
        worker.wait_for("completed")
        assert [live.recv(10).data for _ in range(3)] == ["1/3", "2/3", "3/3"]
        plain.settimeout(10)
        assert [plain.recv() for _ in range(3)] == ["1/3", "2/3", "3/3"]
        proxy.release()
        replayed = [away.recv(30) for _ in range(3)]
        assert [m.data for m in replayed] == ["1/3", "2/3", "3/3"]
        first_offset = replayed[0].offset
        assert [m.offset for m in replayed] == [first_offset, first_offset + 1, first_offset + 2]
        live.close()
        away.close()
    finally:
        plain.close()
        worker.stop()
        proxy.close()


def test_a_script_publishes_into_a_room_on_both_nodes_redis(progress_project, redis_nodes, redis_server):
    first, second = redis_nodes
    members = [V1Client(node.ws_url, "/asok/live") for node in redis_nodes]
    try:
        for member in members:
            member.send(json.dumps({"op": "join_room", "room": "kept-1"}))
            member.notice("position")
        landed = run_script(progress_project, "room:kept-1", "to the room", **_cluster_env(redis_server))
        for member in members:
            frame = member.until(lambda f: f.get("d") == "to the room")[-1]
            assert (frame["s"], frame["e"], frame["o"]) == ("room:kept-1", *landed[0])
    finally:
        for member in members:
            member.close()


def _cluster_env(redis_server) -> dict[str, str]:
    """What a worker or script of the cluster is given: the cluster's Redis."""
    return {"WS_REDIS_URL": redis_server.url}
