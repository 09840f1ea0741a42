"""asok_green.client: the Python resume client, by its rule, against a real server, through cut links and a restart.

The rule (duplicates, gaps, epochs, notices) is driven by a scripted server
that says exactly what a test needs; everything else talks to ``asok serve
--gevent`` serving a real Asok project, directly, through a TCP proxy that cuts
every link (``tests/link_proxy.py``), and across a SIGHUP restart. The
publisher is a page (``/publish``) that broadcasts what it is given.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from asok_green.client import (
    AsyncResumingClient,
    Backoff,
    ClientClosed,
    ContinuityLost,
    HandshakeFailed,
    ResumingClient,
    StreamPositions,
    Verdict,
    full_jitter,
)
from asok_green.client.wire import Message, Notice, decode
from tests.asok_project import make_project, project_env
from tests.conftest import asok_serve
from tests.link_proxy import LinkProxy
from tests.test_restarts import add_pages, http_pid, serves, wait_until

# -- the rule, pure ----------------------------------------------------------------------------


@pytest.mark.quick
def test_positions_deliver_in_order_drop_duplicates_and_see_gaps_and_epochs():
    positions = StreamPositions()
    assert positions.accept("/s", "E", 5) is Verdict.DELIVER  # a stream seen for the first time
    assert positions.accept("/s", "E", 6) is Verdict.DELIVER
    assert positions.accept("/s", "E", 6) is Verdict.DUPLICATE
    assert positions.accept("/s", "E", 3) is Verdict.DUPLICATE
    assert positions.accept("/s", "E", 8) is Verdict.GAP
    assert positions.get("/s") == ("E", 6)  # a gap does not move the position
    assert positions.accept("/s", "F", 1) is Verdict.LOST
    assert positions.get("/s") == ("F", 1)


@pytest.mark.quick
def test_positions_and_notices():
    positions = StreamPositions({"/s": {"e": "E", "o": 4}})
    assert positions.notice("position", "/s", "E", 4) is Verdict.OK
    assert positions.notice("resumed", "/s", "E", 6) is Verdict.GAP  # the replay stopped short
    assert positions.notice("position", "/s", "E", 9) is Verdict.LOST  # past ours, with no replay
    assert positions.notice("position", "/s", "G", 0) is Verdict.LOST  # another epoch
    assert positions.notice("continuity_lost", "/s", "G", 3) is Verdict.LOST
    assert positions.as_dict() == {"/s": {"e": "G", "o": 3}}
    assert StreamPositions({"/s": ("E", 2), "bad": {"e": 1}}).as_dict() == {"/s": {"e": "E", "o": 2}}


@pytest.mark.quick
def test_full_jitter_backoff():
    assert full_jitter(0, 0.5, 10, lambda: 0.999) < 0.5
    assert full_jitter(3, 0.5, 10, lambda: 0.999) < 4.0
    assert full_jitter(10, 0.5, 10, lambda: 0.999) < 10.0
    assert full_jitter(10, 0.5, 10, lambda: 0.0) == 0.0
    backoff = Backoff(base=1, cap=100, stable_after=5, random=lambda: 0.5)
    assert [backoff.next_delay(None) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.next_delay(6.0) == 0.5  # a stable link starts the count again


@pytest.mark.quick
def test_wire_decoding():
    assert decode('{"s": "/a", "e": "E", "o": 3, "d": "x"}') == Message("x", "/a", "E", 3)
    assert decode('{"b": "' + base64.b64encode(b"\x00").decode() + '"}') == Message(b"\x00")
    notice = decode('{"asok": "resumed", "s": "/a", "e": "E", "o": 3, "replayed": 2}')
    assert notice == Notice("resumed", "/a", "E", 3, {"replayed": 2})
    assert decode('{"asok": "later-version", "s": "/a", "e": "E", "o": 3}') is None
    assert decode("not json") is None


# -- the rule, on the wire: a scripted server ----------------------------------------------------


class ScriptedServer:
    """A WebSocket server that answers the n-th connection with ``links[n]``: frames to send, then what to do.

    Each link is ``(frames, end)``: ``frames`` are dicts sent as v1 text frames;
    ``end`` is ``"hold"`` (keep the link open until the client closes it) or a
    close code to close with. A link past the script is held. Paths (with
    their query) are recorded in ``paths``; ``refuse`` answers a handshake with
    that HTTP status instead.
    """

    def __init__(self, links: list[tuple[list[dict], object]], refuse: int | None = None) -> None:
        self.links = links
        self.refuse = refuse
        self.paths: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.decode().split("\r\n")
            index = len(self.paths)
            self.paths.append(lines[0].split()[1])
            if self.refuse:
                sock.sendall(f"HTTP/1.1 {self.refuse} Refused\r\nContent-Length: 2\r\n\r\nno".encode())
                return
            key = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: asok-green.v1\r\n\r\n"
            )
            frames, end = self.links[index] if index < len(self.links) else ([], "hold")
            for frame in frames:
                sock.sendall(_server_frame(0x1, json.dumps(frame).encode()))
            if end != "hold":
                sock.sendall(_server_frame(0x8, int(end).to_bytes(2, "big") + b"bye"))
            _echo_close(sock)


def _echo_close(sock: socket.socket) -> None:
    """Read the client's frames (small, masked) until its close frame, and answer it."""
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
            while len(data) >= 2 and len(data) >= 6 + (data[1] & 0x7F):
                opcode, size = data[0] & 0x0F, 6 + (data[1] & 0x7F)
                data = data[size:]
                if opcode == 0x8:
                    sock.sendall(_server_frame(0x8, b"\x03\xe8"))
                    return
    except OSError:
        pass


def _server_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big"))
    return head + payload


def _msg(offset: int, epoch: str = "E", stream: str = "/s") -> dict:
    return {"s": stream, "e": epoch, "o": offset, "d": f"m{offset}"}


def _notice(kind: str, offset: int, epoch: str = "E", **extra: object) -> dict:
    return {"asok": kind, "s": "/s", "e": epoch, "o": offset, **extra}


QUICK = Backoff(base=0.01, cap=0.05)


def test_a_duplicate_is_dropped_and_a_gap_resumes_from_the_last_offset():
    server = ScriptedServer(
        [
            ([_notice("position", 0), _msg(1), _msg(2), _msg(2), _msg(4)], "hold"),
            ([_msg(3), _msg(4), _notice("resumed", 4, replayed=2), _msg(5)], "hold"),
        ]
    )
    events = []
    with ResumingClient(server.url + "/s", backoff=QUICK, on_event=lambda k, d: events.append(k)) as client:
        got = [client.recv(10).data for _ in range(5)]
        assert got == ["m1", "m2", "m3", "m4", "m5"]
        assert client.stats["duplicates"] == 1 and client.stats["gaps"] == 1 and client.stats["replayed"] == 2
    assert server.paths == ["/s", "/s?asok_since=E:2"]
    assert events[:4] == ["open", "reconnecting", "open", "resumed"]
    server.close()


def test_a_new_epoch_raises_continuity_lost_then_goes_on():
    server = ScriptedServer([([_msg(1), _msg(7, epoch="F")], "hold")])
    with ResumingClient(server.url + "/s", backoff=QUICK) as client:
        assert client.recv(10).offset == 1
        with pytest.raises(ContinuityLost) as lost:
            client.recv(10)
        assert (lost.value.stream, lost.value.epoch, lost.value.offset) == ("/s", "F", 7)
        assert lost.value.reason == "epoch_changed"
        assert client.recv(10) == Message("m7", "/s", "F", 7)
    server.close()


def test_continuity_lost_can_be_a_callback():
    server = ScriptedServer(
        [([_notice("position", 3), _notice("continuity_lost", 9, reason="history_exceeded"), _msg(10)], "hold")]
    )
    lost = []
    with ResumingClient(server.url + "/s", backoff=QUICK, on_continuity_lost=lost.append) as client:
        assert client.recv(10).offset == 10
    assert [(e.offset, e.reason) for e in lost] == [(9, "history_exceeded")]
    server.close()


def test_a_restart_close_reconnects_with_the_position_and_a_final_one_ends():
    server = ScriptedServer([([_msg(1), _msg(2)], 1012), ([_msg(3)], 4001)])
    with ResumingClient(server.url + "/s?x=1", backoff=QUICK) as client:
        assert [m.offset for m in client] == [1, 2, 3]
        with pytest.raises(ClientClosed) as closed:
            client.recv(1)
        assert closed.value.code == 4001
    assert server.paths == ["/s?x=1", "/s?x=1&asok_since=E:2"]
    server.close()


def test_a_refused_handshake_is_not_retried():
    server = ScriptedServer([], refuse=403)
    with pytest.raises(HandshakeFailed) as refused:
        ResumingClient(server.url + "/s").recv(5)
    assert refused.value.status == 403
    assert len(server.paths) == 1
    server.close()


def test_the_positions_go_on_in_a_later_client():
    server = ScriptedServer([([_msg(1), _msg(2)], "hold"), ([_msg(3)], "hold")])
    with ResumingClient(server.url + "/s") as first:
        assert [first.recv(10).offset for _ in range(2)] == [1, 2]
        saved = first.positions_dict()
    with ResumingClient(server.url + "/s", positions=saved) as second:
        assert second.recv(10).offset == 3
    assert server.paths[1] == "/s?asok_since=E:2"
    server.close()


def test_under_asyncio_continuity_lost_is_raised_and_a_final_close_ends_the_loop():
    server = ScriptedServer([([_msg(1), _msg(7, epoch="F"), _msg(8, epoch="F")], 4001)])
    events = []

    async def main() -> tuple[list, list, str]:
        async with AsyncResumingClient(server.url + "/s", backoff=QUICK, on_event=lambda k, d: events.append(k)) as c:
            first = await c.recv(10)
            with pytest.raises(ContinuityLost) as lost:
                await c.recv(10)
            rest = [m async for m in c]  # until the server's final 4001
            with pytest.raises(ClientClosed):
                await c.recv(1)
        return [first.offset, *(m.offset for m in rest)], [lost.value.epoch, lost.value.reason], c.stats["links"]

    try:
        assert asyncio.run(main()) == ([1, 7, 8], ["F", "epoch_changed"], 1)
        assert events == ["open"]
    finally:
        server.close()


# -- a real server ---------------------------------------------------------------------------

ROUTES = """
@ws.on("/feed/[topic]", history=5000)
def feed(conn, message):
    ws.broadcast(conn.path, message)


@ws.on("/short/[topic]", history=5)
def short(conn, message):
    pass


ws.keep_history("room:kept-*", size=5000)


@ws.room_authorizer
def any_room(conn, room):
    return True
"""

PUBLISH_PAGE = '''
def render(request):
    """/publish?to=/feed/x&msg=...: broadcast msg to a path (or, with room=, to a room)."""
    room = request.args.get("room")
    if room:
        request.app.ws.broadcast_to(room, request.args.get("msg", ""))
    else:
        request.app.ws.broadcast(request.args.get("to", ""), request.args.get("msg", ""))
    return request.text("ok")
'''


@pytest.fixture(scope="module")
def client_project(tmp_path_factory) -> pathlib.Path:
    """The test project with streams that keep history, a /publish page, and /pid (which process answers)."""
    root = add_pages(make_project(tmp_path_factory.mktemp("client-project"), extra_wsgi=ROUTES))
    (root / "src/pages/publish").mkdir(parents=True, exist_ok=True)
    (root / "src/pages/publish/page.py").write_text(PUBLISH_PAGE)
    return root


@pytest.fixture(scope="module")
def server(client_project, tmp_path_factory):
    proc = asok_serve(client_project, tmp_path_factory.mktemp("client-logs"))
    yield proc
    proc.stop()


def publish(port: int, message: str, to: str | None = None, room: str | None = None) -> None:
    """Broadcast ``message`` through the /publish page; AssertionError unless it answers 200."""
    query = urllib.parse.urlencode({"msg": message, **({"room": room} if room else {"to": to})})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/publish?{query}", timeout=30) as answer:
        assert answer.status == 200


class Reader:
    """A thread that reads a client until it has ``count`` messages (or it is closed)."""

    def __init__(self, client: ResumingClient, count: int) -> None:
        self.client, self.count = client, count
        self.messages: list[Message] = []
        self.lost: list[ContinuityLost] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while len(self.messages) < self.count:
                try:
                    message = self.client.recv(60)
                except ContinuityLost as lost:
                    self.lost.append(lost)
                    continue
                if message.stream is not None:
                    self.messages.append(message)
        except BaseException as error:  # reported by wait()
            self.error = error

    def wait(self, timeout: float = 90) -> list[str]:
        self._thread.join(timeout)
        assert self.error is None, repr(self.error)
        assert not self._thread.is_alive(), f"only {len(self.messages)} of {self.count} messages arrived"
        return [m.data for m in self.messages]


def test_messages_arrive_in_order_with_their_offsets(server):
    with ResumingClient(server.ws_url + "/feed/basic") as client:
        for i in range(5):
            publish(server.port, f"m{i}", to="/feed/basic")
        got = [client.recv(10) for _ in range(5)]
    assert [m.data for m in got] == [f"m{i}" for i in range(5)]
    assert [m.offset for m in got] == list(range(got[0].offset, got[0].offset + 5))
    assert {m.stream for m in got} == {"/feed/basic"}


def test_a_dropped_link_loses_nothing(server):
    proxy = LinkProxy(server.port)
    try:
        client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/feed/drop", backoff=QUICK).connect()
        reader = Reader(client, 30)
        for i in range(10):
            publish(server.port, f"m{i}", to="/feed/drop")
        wait_until(lambda: len(reader.messages) == 10, what="the first ten", timeout=30)
        proxy.hold()
        for i in range(10, 30):
            publish(server.port, f"m{i}", to="/feed/drop")
        proxy.release()
        assert reader.wait() == [f"m{i}" for i in range(30)]
        publish(server.port, "after", to="/feed/drop")
        assert client.recv(10).data == "after"  # behind the replay's "resumed" notice
        assert client.stats["reconnects"] >= 1 and client.stats["replayed"] == 20
        client.close()
    finally:
        proxy.close()


def test_under_asyncio_a_cancelled_recv_loses_nothing_and_cut_links_are_resumed(server):
    proxy = LinkProxy(server.port)

    async def publish_async(message: str) -> None:
        await asyncio.to_thread(publish, server.port, message, "/feed/aio")

    async def main() -> tuple[list[str], str, int]:
        url = f"ws://127.0.0.1:{proxy.port}/feed/aio"
        async with AsyncResumingClient(url, backoff=QUICK) as client:
            await client.wait_ready(10)
            for i in range(30):
                if i % 10 == 9:
                    proxy.cut()
                await publish_async(f"m{i}")
            got = [(await client.recv(30)).data for _ in range(30)]
            pending = asyncio.ensure_future(client.recv())
            await asyncio.sleep(0)  # one turn of the loop, no time: the recv is now waiting
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            await publish_async("after the cancelled recv")
            after = (await client.recv(30)).data
            return got, after, client.stats["reconnects"]

    try:
        got, after, reconnects = asyncio.run(main())
    finally:
        proxy.close()
    assert got == [f"m{i}" for i in range(30)]
    assert after == "after the cancelled recv"
    assert reconnects >= 1


def test_history_exceeded_is_continuity_lost_then_what_is_held_then_live(server):
    proxy = LinkProxy(server.port)
    try:
        client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/short/a", backoff=QUICK).connect()
        publish(server.port, "first", to="/short/a")
        assert client.recv(10).data == "first"
        proxy.hold()
        for i in range(20):
            publish(server.port, f"missed{i}", to="/short/a")
        proxy.release()
        with pytest.raises(ContinuityLost) as lost:
            client.recv(30)
        assert lost.value.reason == "history_exceeded"
        # The five messages the history still holds follow the notice, then the live ones.
        assert [client.recv(10).data for _ in range(5)] == [f"missed{i}" for i in range(15, 20)]
        publish(server.port, "live", to="/short/a")
        assert client.recv(10).data == "live"
        assert client.stats["duplicates"] == 0
        client.close()
    finally:
        proxy.close()


def test_rooms_are_joined_again_with_their_position(server):
    proxy = LinkProxy(server.port)
    try:
        client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/asok/live", backoff=QUICK)
        client.join("kept-1")
        reader = Reader(client, 20)
        wait_until(lambda: client.positions.get("room:kept-1") is not None, what="the room's position", timeout=30)
        for i in range(5):
            publish(server.port, f"r{i}", room="kept-1")
        wait_until(lambda: len(reader.messages) == 5, what="the first five", timeout=30)
        proxy.hold()
        for i in range(5, 20):
            publish(server.port, f"r{i}", room="kept-1")
        proxy.release()
        assert reader.wait() == [f"r{i}" for i in range(20)]
        assert {m.stream for m in reader.messages} == {"room:kept-1"}
        client.close()
    finally:
        proxy.close()


def run_through_cuts(port: int, stream: str, seconds: float, rate: float, cut_every: float) -> dict:
    """Publish ``rate`` messages a second for ``seconds`` while a proxy cuts every link every ``cut_every`` s.

    Returns the figures: sent, received, in order, duplicates delivered, the
    client's counters, the cuts made and the links the server closed with 1012 (a restart).
    """
    proxy = LinkProxy(port)
    total = int(seconds * rate)
    stop = threading.Event()
    cuts = []
    codes = []

    def on_event(kind: str, detail: dict) -> None:
        if kind == "reconnecting":
            codes.append(detail.get("code"))

    def cutter() -> None:
        while not stop.wait(cut_every):
            cuts.append(proxy.cut())

    try:
        url = f"ws://127.0.0.1:{proxy.port}{stream}"
        client = ResumingClient(url, backoff=Backoff(base=0.2, cap=2.0), on_event=on_event).connect()
        reader = Reader(client, total)
        threading.Thread(target=cutter, daemon=True).start()
        started = time.monotonic()
        for i in range(total):
            publish(port, f"m{i}", to=stream)
            stop.wait(max(0.0, started + (i + 1) / rate - time.monotonic()))  # the pace, not a synchronisation
        stop.set()
        got = reader.wait(120)
        client.close()
    finally:
        stop.set()
        proxy.close()
    return {
        "sent": total,
        "received": len(got),
        "in_order": got == [f"m{i}" for i in range(total)],
        "duplicates_delivered": len(got) - len(set(got)),
        "cuts": len(cuts),
        "links": client.stats["links"],
        "replayed": client.stats["replayed"],
        "duplicates_dropped": client.stats["duplicates"],
        "gaps": client.stats["gaps"],
        "continuity_lost": client.stats["continuity_lost"],
        "restart_closes": codes.count(1012),
    }


@pytest.mark.timeout(180)
def test_every_message_in_order_through_a_proxy_that_cuts_every_link_every_2s(server):
    figures = run_through_cuts(server.port, "/feed/cuts", seconds=10, rate=20, cut_every=2)
    print(figures)
    assert figures["in_order"] and figures["received"] == figures["sent"] == 200, figures
    assert figures["duplicates_delivered"] == 0 and figures["continuity_lost"] == 0, figures
    assert figures["cuts"] >= 4 and figures["links"] >= 4, figures


GEVENT_READERS = """
from gevent import monkey

monkey.patch_all()

import json
import sys

import gevent

from asok_green.client import Backoff, ResumingClient

url, count = sys.argv[1], int(sys.argv[2])
ticks = []


def read(topic):
    with ResumingClient(f"{url}/feed/{topic}", backoff=Backoff(base=0.05, cap=0.5)) as client:
        print("ready", topic, flush=True)
        return [client.recv(60).data for _ in range(count)]


def tick():
    while True:
        ticks.append(1)
        gevent.sleep(0.01)


ticker = gevent.spawn(tick)
readers = [gevent.spawn(read, topic) for topic in ("g1", "g2")]
gevent.joinall(readers, raise_error=True)
ticker.kill()
print(json.dumps({"got": [r.value for r in readers], "ticks": len(ticks)}), flush=True)
"""


@pytest.mark.timeout(120)
def test_under_gevent_two_clients_in_greenlets_resume_through_cuts(server, tmp_path):
    proxy = LinkProxy(server.port)
    script = tmp_path / "readers.py"
    script.write_text(GEVENT_READERS)
    proc = subprocess.Popen(
        [sys.executable, str(script), f"ws://127.0.0.1:{proxy.port}", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = {proc.stdout.readline().split()[-1] for _ in range(2)}
        assert ready == {"g1", "g2"}
        for i in range(20):
            if i % 5 == 4:
                proxy.cut()
            for topic in ("g1", "g2"):
                publish(server.port, f"m{i}", to=f"/feed/{topic}")
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["got"] == [[f"m{i}" for i in range(20)]] * 2
    assert result["ticks"] > 0  # the loop kept running while the clients waited


def test_the_command_line_tails_a_stream_and_resumes_from_its_state_file(server, tmp_path):
    state = tmp_path / "state.json"
    argv = [sys.executable, "-m", "asok_green.client", server.ws_url + "/feed/cli", "--state", str(state), "--json"]

    def tail(count: int) -> subprocess.Popen:
        """The command line, once it has connected (it says so on stderr)."""
        proc = subprocess.Popen(
            [*argv, "--count", str(count)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert "connected to" in proc.stderr.readline()
        return proc

    first = tail(2)
    for i in range(2):
        publish(server.port, f"m{i}", to="/feed/cli")
    out, _ = first.communicate(timeout=30)
    assert [json.loads(line)["d"] for line in out.splitlines()] == ["m0", "m1"]
    assert json.loads(state.read_text())["/feed/cli"]["o"] == json.loads(out.splitlines()[-1])["o"]
    for i in range(2, 5):
        publish(server.port, f"m{i}", to="/feed/cli")  # while nobody listens
    out, _ = tail(3).communicate(timeout=30)
    assert [json.loads(line)["d"] for line in out.splitlines()] == ["m2", "m3", "m4"]


# -- across a SIGHUP restart of asok serve --gevent ----------------------------------------------


@pytest.fixture
def restarting_server(client_project, tmp_path):
    proc = asok_serve(client_project, tmp_path, env=project_env(WS_DRAIN_SECONDS="1", WS_SHUTDOWN_TIMEOUT="30"))
    yield proc
    proc.stop()


@pytest.mark.timeout(180)
def test_every_message_in_order_across_a_sighup_restart(restarting_server):
    server = restarting_server
    total, rate = 120, 20
    codes = []
    client = ResumingClient(
        server.ws_url + "/feed/restart",
        backoff=Backoff(base=0.2, cap=2.0),
        on_event=lambda kind, detail: codes.append(detail.get("code")) if kind == "reconnecting" else None,
    ).connect()
    reader = Reader(client, total)
    old = http_pid(server.port)
    pace = threading.Event()
    started = time.monotonic()
    for i in range(total):
        if i == total // 3:
            server.proc.send_signal(signal.SIGHUP)
        publish(server.port, f"m{i}", to="/feed/restart")
        pace.wait(max(0.0, started + (i + 1) / rate - time.monotonic()))
    assert reader.wait(120) == [f"m{i}" for i in range(total)]
    wait_until(lambda: not serves(server, old), what="the old process gone", timeout=60)
    assert http_pid(server.port) != old
    assert 1012 in codes, codes
    assert client.stats["continuity_lost"] == 0
    client.close()
