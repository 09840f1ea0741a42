"""A restart is a short-lived cluster: the old and the new process share broadcasts while both run.

During a SIGHUP restart the old process drains (its WebSockets close with 1012
over ``WS_DRAIN_SECONDS``) while the new one already serves. A message sent on
either side in that window reaches the clients of both: live for plain clients,
with its offset, once and in order, for ``asok-green.v1`` clients. A SIGHUP that
arrives while a restart or its drain is under way is remembered and carried out
once it ends: one more restart, whatever the number of signals.

The drains here are long (600 s) so that the window is certain: with N open
WebSockets the drain closes one batch per N-th of the period, so of the
connections a test opens before the restart at most one is closed in the first
minutes. Each test lets a sender or receiver closed that early stand aside and
uses its twin.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import threading

import pytest
import websocket

from tests.asok_project import make_project, project_env
from tests.conftest import asok_serve
from tests.test_restarts import (
    PID_PAGE,
    PID_ROUTE,
    Hammer,
    alive,
    http_get,
    http_pid,
    serves,
    wait_until,
    ws_open,
    ws_pid,
)
from tests.v1_client import V1Client, payload, stream_messages

#: /feed keeps history (v1 clients get offsets); /talk does not. Both broadcast what they get.
FEED_ROUTES = """


@ws.on("/feed", history=200)
def feed(conn, message):
    ws.broadcast("/feed", message)


@ws.on("/talk")
def talk(conn, message):
    ws.broadcast("/talk", message)
"""

#: /slowa and /slowb answer once slow-X-release exists in the project; they create slow-X-started first.
SLOW_PAGE = """
import os
import time


def render(request):
    open("slow-{tag}-started", "w").close()
    while not os.path.exists("slow-{tag}-release"):
        time.sleep(0.02)
    return request.text("slow {tag} done")
"""

#: Long enough that no test outlives the window in which at most one of its connections is closed.
LONG_DRAIN = "600"


@pytest.fixture(scope="module")
def cluster_project(tmp_path_factory) -> pathlib.Path:
    """The test project with /pid, /wspid, /feed, /talk, /slowa and /slowb."""
    root = make_project(tmp_path_factory.mktemp("restart-cluster-project"), extra_wsgi=PID_ROUTE + FEED_ROUTES)
    pages = {"pid": PID_PAGE, "slowa": SLOW_PAGE.format(tag="a"), "slowb": SLOW_PAGE.format(tag="b")}
    for name, source in pages.items():
        (root / "src" / "pages" / name).mkdir(parents=True, exist_ok=True)
        (root / "src" / "pages" / name / "page.py").write_text(source)
    return root


@pytest.fixture
def draining_server(cluster_project, tmp_path):
    """``asok serve --gevent`` whose restarts drain for 10 minutes."""
    proc = asok_serve(cluster_project, tmp_path, env=project_env(WS_DRAIN_SECONDS=LONG_DRAIN, WS_SHUTDOWN_TIMEOUT="5"))
    yield proc
    proc.stop()


def restart_and_wait_for_drain(server, connections: int) -> tuple[int, int]:
    """SIGHUP; once the old process drains (it accepts no more), the old and the new PID."""
    old = http_pid(server.port)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(f"closing {connections} WebSocket(s) with 1012", timeout=60)
    new = http_pid(server.port)
    assert new != old
    return old, new


def read_texts(conn: websocket.WebSocket, count: int, timeout: float = 20) -> list[str] | None:
    """The next ``count`` text messages on ``conn``; None if the server closes it (1012) first."""
    conn.settimeout(timeout)
    texts = []
    while len(texts) < count:
        try:
            opcode, data = conn.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            texts.append(data.decode())
    return texts


def send_from_old(senders: list[websocket.WebSocket], prefix: str, count: int) -> list[str]:
    """Send ``count`` messages from the first sender the drain has not closed; those its own echo confirms.

    A sender sees its own broadcast (no ``exclude``): the echo proves the old
    process handled the message. A sender closed by the drain stands aside.
    """
    for index, sender in enumerate(senders):
        sent = [f"{prefix}-{index}-{n}" for n in range(1, count + 1)]
        for text in sent:
            try:
                sender.send(text)
            except (OSError, websocket.WebSocketException):
                break
        echoed = read_texts(sender, count)
        if echoed is not None:
            assert echoed == sent
            return sent
    raise AssertionError("every sender on the old process was closed by the drain")


def read_v1(client: V1Client, upto: int, timeout: float = 20) -> list[dict] | None:
    """A v1 client's frames up to the stream message of offset ``upto``; None if the server closes it first."""
    client.ws.settimeout(timeout)
    frames = []
    while True:
        try:
            opcode, data = client.ws.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            frames.append(json.loads(data))
            if frames[-1].get("o") == upto and "asok" not in frames[-1]:
                return frames


def v1_offsets_and_texts(frames: list[dict]) -> list[tuple[int, str]]:
    """``(offset, text)`` of each stream message among ``frames``."""
    return [(frame["o"], payload(frame)) for frame in stream_messages(frames)]


@pytest.mark.timeout(120)
def test_a_message_sent_on_the_draining_process_reaches_the_new_process_clients(draining_server):
    server = draining_server
    feed_senders = [ws_open(server.port, "/feed") for _ in range(2)]
    talk_senders = [ws_open(server.port, "/talk") for _ in range(2)]
    old, new = restart_and_wait_for_drain(server, connections=4)
    v1 = V1Client(server.ws_url, "/feed")
    position = v1.notice("position")
    plain_feed = ws_open(server.port, "/feed")
    plain_talk = ws_open(server.port, "/talk")
    probe = ws_open(server.port)
    assert ws_pid(probe) == new  # the old process accepts no more: these are the new one's clients
    probe.close()

    feed_sent = send_from_old(feed_senders, "feed", 3)
    talk_sent = send_from_old(talk_senders, "talk", 3)

    # Live, without waiting for the new process to publish anything on those streams.
    assert read_texts(plain_feed, 3) == feed_sent
    assert read_texts(plain_talk, 3) == talk_sent
    frames = v1.until_offset(position["o"] + 3)
    first = position["o"] + 1
    assert v1_offsets_and_texts(frames) == list(zip(range(first, first + 3), feed_sent))
    assert {frame["e"] for frame in stream_messages(frames)} == {position["e"]}

    # Once: a message sent on the new process comes next, with the next offset, and nothing before it.
    plain_feed.send("marker")
    assert read_texts(plain_feed, 1) == ["marker"]
    assert v1_offsets_and_texts(v1.until_offset(first + 3)) == [(first + 3, "marker")]
    assert serves(server, old), "the old process still drains: the messages crossed while both ran"
    for conn in (plain_feed, plain_talk, *feed_senders, *talk_senders):
        conn.close(timeout=1)
    v1.close()


@pytest.mark.timeout(120)
def test_a_message_sent_on_the_new_process_reaches_the_draining_process_clients(draining_server):
    server = draining_server
    v1s = [V1Client(server.ws_url, "/feed") for _ in range(2)]
    positions = [client.notice("position") for client in v1s]
    plain_feeds = [ws_open(server.port, "/feed") for _ in range(2)]
    plain_talks = [ws_open(server.port, "/talk") for _ in range(2)]
    old, new = restart_and_wait_for_drain(server, connections=6)
    feed_sender = ws_open(server.port, "/feed")
    talk_sender = ws_open(server.port, "/talk")
    probe = ws_open(server.port)
    assert ws_pid(probe) == new  # the old process accepts no more: these are the new one's clients
    probe.close()

    feed_sent = [f"new-feed-{n}" for n in range(1, 4)]
    talk_sent = [f"new-talk-{n}" for n in range(1, 4)]
    for text in feed_sent:
        feed_sender.send(text)
    for text in talk_sent:
        talk_sender.send(text)
    assert read_texts(feed_sender, 3) == feed_sent
    assert read_texts(talk_sender, 3) == talk_sent

    # At most one of the six old connections is closed this early: the others all get everything.
    closed = 0
    for conn, sent in [(c, feed_sent) for c in plain_feeds] + [(c, talk_sent) for c in plain_talks]:
        got = read_texts(conn, 3)
        if got is None:
            closed += 1
            continue
        assert got == sent
    got_by_v1 = 0
    for client, position in zip(v1s, positions):
        first = position["o"] + 1
        frames = read_v1(client, first + 2)
        if frames is None:
            closed += 1
            continue
        assert v1_offsets_and_texts(frames) == list(zip(range(first, first + 3), feed_sent))
        got_by_v1 += 1
    assert closed <= 1
    assert got_by_v1 >= 1
    assert serves(server, old), "the old process still drains: the messages crossed while both ran"
    for conn in (feed_sender, talk_sender, *plain_feeds, *plain_talks):
        conn.close(timeout=1)
    for client in v1s:
        client.close()


def release(project: pathlib.Path, tag: str) -> None:
    """Let the slow page ``tag`` answer."""
    (project / f"slow-{tag}-release").touch()


class SlowRequest:
    """A GET of /slow<tag> in a thread, held by the server until :func:`release`."""

    def __init__(self, project: pathlib.Path, port: int, tag: str):
        for name in (f"slow-{tag}-started", f"slow-{tag}-release"):
            (project / name).unlink(missing_ok=True)
        self.answer: dict = {}
        self.thread = threading.Thread(target=self._get, args=(port, f"/slow{tag}"), daemon=True)
        self.thread.start()
        wait_until(lambda: (project / f"slow-{tag}-started").exists(), what=f"the slow page {tag} running")

    def _get(self, port: int, path: str) -> None:
        try:
            self.answer["response"] = http_get(port, path, timeout=90)
        except OSError as exc:
            self.answer["error"] = exc


def restarts(log: str) -> list[tuple[int, int]]:
    """``(new, old)`` PIDs of every restart the log reports, in order."""
    return [(int(new), int(old)) for new, old in re.findall(r"restarted: process (\d+) serves, (\d+) drains", log)]


def wait_for_restarts(server, count: int) -> list[tuple[int, int]]:
    """The restarts the log reports, once there are ``count`` of them."""
    wait_until(lambda: len(restarts(server.log())) >= count, what=f"{count} restart(s) reported", timeout=90)
    return restarts(server.log())


@pytest.mark.timeout(170)
def test_a_sighup_during_a_drain_restarts_once_more_when_it_ends(cluster_project, tmp_path):
    env = project_env(WS_DRAIN_SECONDS="1", WS_SHUTDOWN_TIMEOUT="60")
    server = asok_serve(cluster_project, tmp_path, env=env)
    try:
        first = http_pid(server.port)
        with Hammer(server.port) as hammer:
            hammer.wait_rounds(3)
            # The process asok started drains, held by a request in flight; two more SIGHUPs meanwhile.
            held_first = SlowRequest(cluster_project, server.port, "a")
            server.proc.send_signal(signal.SIGHUP)
            [(second, _)] = wait_for_restarts(server, 1)
            server.wait_for_log("restarting: a new process serves", timeout=30)  # it accepts no more
            # The second process holds its own drain in turn, from before the remembered restart.
            held_second = SlowRequest(cluster_project, server.port, "b")
            server.proc.send_signal(signal.SIGHUP)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log("SIGHUP while a restart is under way", timeout=30)
            assert restarts(server.log()) == [(second, first)]
            release(cluster_project, "a")
            held_first.thread.join(60)
            assert held_first.answer == {"response": (200, "slow a done")}

            # Once the first drain ends, the remembered SIGHUP restarts once more (the parent now).
            third = wait_for_restarts(server, 2)[1][0]
            assert restarts(server.log()) == [(second, first), (third, second)]
            # Two SIGHUPs to the parent while the second process still drains: one more restart, after it.
            server.proc.send_signal(signal.SIGHUP)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log(f"SIGHUP while process {second} drains", timeout=30)
            assert serves(server, second)
            release(cluster_project, "b")
            held_second.thread.join(60)
            assert held_second.answer == {"response": (200, "slow b done")}
            fourth = wait_for_restarts(server, 3)[2][0]
            wait_until(lambda: http_pid(server.port) == fourth, what="the third restart serving", timeout=60)
            wait_until(lambda: not alive(third), what="the third process drained", timeout=60)
            hammer.wait_rounds(5)
        log = server.log()
        assert restarts(log) == [(second, first), (third, second), (fourth, third)], log
        assert not alive(second)
        # The third restart came after the second process had drained (the second "drained"), not beside it.
        lines = log.splitlines()
        drained = [i for i, line in enumerate(lines) if line.endswith(" drained")]
        started = next(i for i, line in enumerate(lines) if f"restarted: process {fourth} serves" in line)
        assert len(drained) >= 2 and drained[1] < started, log
        assert hammer.failures == []
        assert server.proc.poll() is None
        assert server.stop() == 0
    finally:
        server.stop()
        for tag in ("a", "b"):
            release(cluster_project, tag)
