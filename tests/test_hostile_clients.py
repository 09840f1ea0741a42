"""What a hostile client can do to the others, over real sockets against a real server process.

The server is ``tests/hostile_app.py``; the floods come from ``tests/flooder.py``
in a process of its own, so the test is never the bottleneck. No wall-clock
assertions: each test waits for the event it needs with a generous deadline,
and checks that it happened while the attack was still going on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import websocket

from tests.conftest import ServerProcess, free_port, wait_until
from tests.echo import ROOT
from tests.raw_client import OP_CLOSE, OP_PING, OP_TEXT, RawClient
from tests.server_frames import client_frame, close_code, split_server_frame

pytestmark = pytest.mark.timeout(110)


def hostile_serve(logs, **env: str) -> ServerProcess:
    """``tests/hostile_app.py`` on a free port, with ``WS_*`` limits from ``env``."""
    port = free_port()
    # Run as a script, so the asok_green it imports is the one on PYTHONPATH.
    argv = [sys.executable, str(ROOT / "tests" / "hostile_app.py"), "--port", str(port)]
    return ServerProcess(argv, ROOT, {**os.environ, **env}, port, logs / f"hostile-{port}.log")


@pytest.fixture
def serve(tmp_path):
    """Start servers for one test; stop them after it."""
    started = []

    def start(**env: str) -> ServerProcess:
        started.append(hostile_serve(tmp_path, **env))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


class Flooder:
    """``tests/flooder.py`` running against a server."""

    def __init__(self, port: int, path: str = "/count", kind: str = "text"):
        argv = [sys.executable, "-m", "tests.flooder", "--port", str(port), "--path", path, "--kind", kind]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "flooding"

    @property
    def flooding(self) -> bool:
        """True while the flooder is connected and sending."""
        return self.proc.poll() is None

    def wait_ended(self, timeout: float) -> str:
        """Wait until the server hung up on the flooder; what it printed."""
        out, _ = self.proc.communicate(timeout=timeout)
        return out

    def stop(self) -> None:
        """Kill it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def ask_stats(server: ServerProcess) -> dict:
    """The server's own count of handler calls, its stats and RSS."""
    client = websocket.create_connection(server.ws_url + "/stats", timeout=15)
    try:
        client.send("?")
        return json.loads(client.recv())
    finally:
        client.close()


def server_frames(raw: RawClient, timeout: float) -> list[tuple[bool, int, bytes]]:
    """Every frame the server sends until it ends the connection, as ``(fin, opcode, payload)``.

    Fails if the stream ends inside a frame.
    """
    frames = []
    data = raw.buffer
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = raw.sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            chunk = b""
        data += chunk
        while (split := split_server_frame(data)) is not None:
            (fin, _, opcode, payload), data = split
            frames.append((fin, opcode, payload))
        if not chunk:
            assert data == b"", f"stream ended inside a frame: {len(data)} bytes left over"
            return frames
    raise AssertionError(f"server did not end the connection within {timeout}s")


def log_marker(server: ServerProcess) -> None:
    """Have ``server`` log a line of its own and wait for it: whatever it logged before is in the log."""
    path = f"/log-marker-{uuid.uuid4().hex}"
    raw = RawClient(server.port)
    assert raw.upgrade(path).startswith(b"HTTP/1.1 404")
    raw.close()
    server.wait_for_log(f"refused WebSocket {path}")


def no_traceback(server: ServerProcess) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-4000:]


# -- fairness ----------------------------------------------------------------


def test_a_flooding_client_does_not_freeze_the_others(serve):
    server = serve(WS_PING_INTERVAL="0.5", WS_PING_TIMEOUT="60")
    silent = RawClient(server.port, timeout=5)
    silent.upgrade("/echo")
    probe = websocket.create_connection(server.ws_url + "/echo", timeout=5)
    probe.send("warm-up")
    assert probe.recv() == "warm-up"

    flooder = Flooder(server.port, "/count")
    try:
        wait_until(lambda: ask_stats(server)["calls"] > 0, what="the server handling the flood")
        # Drop the pings the silent client got so far: the one it waits for below comes during the flood.
        silent.sock.settimeout(0.1)
        try:
            while silent.sock.recv(65536):
                pass
        except TimeoutError:
            pass
        # Another client's round trips complete (each within websocket-client's 5 s timeout).
        for i in range(20):
            probe.send(f"probe {i}")
            assert probe.recv() == f"probe {i}"
        # HTTP is served.
        with urllib.request.urlopen(server.url + "/", timeout=5) as page:
            assert page.read() == b"hostile app page\n"
        # The keep-alive timer still runs: the silent client gets a ping.
        silent.sock.settimeout(5)
        assert split_server_frame(silent.sock.recv(65536))[0][2] == OP_PING
        assert flooder.flooding
        # And the flooder is served too.
        assert ask_stats(server)["calls"] > 0
        assert flooder.flooding
    finally:
        flooder.stop()
        probe.close()
    no_traceback(server)


def test_rate_limit_closes_a_flooder_at_once_and_no_handler_runs_after(serve):
    server = serve(WS_MAX_MESSAGES_PER_SECOND="100", WS_CLOSE_TIMEOUT="60")
    flooder = Flooder(server.port, "/count")
    try:
        # The server fails the connection: it does not wait 60 s for a close frame the flooder never sends.
        assert "ended after" in flooder.wait_ended(timeout=30)
        calls = ask_stats(server)["calls"]
        assert 1 <= calls <= 200  # the burst of 100, and what came in while the next tokens filled
        # Once the flooder's connection is gone from the server, none of its messages can be handled.
        wait_until(lambda: ask_stats(server)["connections"] == 1, what="the flooder's connection gone")
        stats = ask_stats(server)
        assert stats["calls"] == calls
        assert stats["stats"]["rate_limited"] == 1
        server.wait_for_log("over 100.0 messages/s")
    finally:
        flooder.stop()
    no_traceback(server)


def test_rate_limited_client_sees_1008(serve):
    server = serve(WS_MAX_MESSAGES_PER_SECOND="20", WS_CLOSE_TIMEOUT="60")
    raw = RawClient(server.port)
    raw.upgrade("/count")
    raw.sock.sendall(client_frame(OP_TEXT, b"x") * 5000)
    frames = server_frames(raw, timeout=20)
    assert frames[-1][1] == OP_CLOSE and close_code(frames[-1][2]) == 1008
    assert ask_stats(server)["calls"] <= 40


# -- bounded memory ------------------------------------------------------------


def test_empty_continuation_frames_end_in_1009_with_memory_bounded(serve):
    server = serve()
    before = ask_stats(server)["rss_kb"]
    raw = RawClient(server.port)
    raw.upgrade("/count")
    raw.send_frame(OP_TEXT, b"a", fin=False)
    empty = bytes([0x00, 0x80, 1, 2, 3, 4])  # a masked, non-final, empty continuation frame
    block = empty * 10_000
    sent = 0
    try:
        while sent < 12_000_000:  # 2 million frames, 12 times what the 1 MiB limit allows
            raw.sock.sendall(block)
            sent += len(block)
    except OSError:
        pass
    frames = server_frames(raw, timeout=20)
    assert [close_code(p) for _, op, p in frames if op == OP_CLOSE] == [1009]
    assert ask_stats(server)["rss_kb"] - before < 20_000


def test_ping_flood_from_a_client_that_never_reads_is_bounded(serve):
    server = serve(WS_SEND_BUFFER="16384")
    before = ask_stats(server)["rss_kb"]
    raw = RawClient(server.port)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.upgrade("/count")
    block = bytes([0x89, 0x80, 1, 2, 3, 4]) * 10_000  # masked empty pings
    sent = 0
    try:
        while sent < 12_000_000:  # 2 million pings, never reading a pong
            raw.sock.sendall(block)
            sent += len(block)
    except OSError:
        pass
    stats = ask_stats(server)
    # Pongs owed to the client coalesce: at most one waits, so it is neither closed nor a memory sink.
    assert stats["rss_kb"] - before < 8_000
    assert stats["stats"].get("slow_consumers_closed", 0) == 0
    raw.close()


# -- a clean close ---------------------------------------------------------------


def test_slow_consumer_gets_whole_frames_then_1008_and_no_traceback(serve):
    # The sink never answers the close frame: the server drops it after the close timeout.
    server = serve(WS_SEND_BUFFER="8192", WS_MAX_QUEUE="65536", WS_CLOSE_TIMEOUT="8")
    for attempt in range(2):
        sink = RawClient(server.port)
        # Small buffers on both sides: the kernel takes some broadcast frames only in part.
        sink.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sink.upgrade("/sink")
        pump = websocket.create_connection(server.ws_url + "/pump", timeout=10)
        pump.send("300 3001")
        assert pump.recv() == "pumped"
        pump.close()
        # The sink has been closed as a slow consumer; now it reads everything.
        wait_until(lambda n=attempt + 1: ask_stats(server)["stats"].get("slow_consumers_closed", 0) == n, what="closed")
        frames = server_frames(sink, timeout=20)
        *data, last = frames
        assert data, "the sink got no message before its close frame"
        for i, (fin, opcode, payload) in enumerate(data):
            assert fin and opcode == OP_TEXT and len(payload) == 3001
            assert payload[:8] == f"{i:08d}".encode()
        assert last[1] == OP_CLOSE and close_code(last[2]) == 1008
        assert last[2][2:] == b"send queue over limit: client too slow"
    log_marker(server)
    no_traceback(server)


def test_no_close_path_logs_a_traceback(serve, tmp_path):
    server = serve(
        WS_PING_INTERVAL="0.3",
        WS_PING_TIMEOUT="0.5",
        WS_CLOSE_TIMEOUT="1",
        WS_MAX_MESSAGES_PER_SECOND="50",
        WS_SEND_BUFFER="8192",
        WS_MAX_QUEUE="65536",
    )
    # Client closes, politely.
    client = websocket.create_connection(server.ws_url + "/echo", timeout=5)
    client.close()
    # Server closes, and the client never answers: dropped after the close timeout.
    raw = RawClient(server.port)
    raw.upgrade("/bye")
    raw.send_frame(OP_TEXT, b"bye")
    assert raw.close_code(timeout=10) == 4000
    # The client resets the connection.
    raw = RawClient(server.port)
    raw.upgrade("/echo")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    # Keep-alive timeout: a client that never answers pings.
    raw = RawClient(server.port)
    raw.upgrade("/echo")
    assert raw.close_code(timeout=10) == 1011
    # Rate limit.
    raw = RawClient(server.port)
    raw.upgrade("/count")
    raw.sock.sendall(client_frame(OP_TEXT, b"x") * 500)
    assert raw.close_code(timeout=10) == 1008
    # Protocol error.
    raw = RawClient(server.port)
    raw.upgrade("/echo")
    raw.send_frame(OP_TEXT, b"\xc3\x28")
    assert raw.close_code(timeout=10) == 1007
    # Slow consumer that never answers the close.
    sink = RawClient(server.port)
    sink.upgrade("/sink")
    pump = websocket.create_connection(server.ws_url + "/pump", timeout=10)
    pump.send("300 3001")
    assert pump.recv() == "pumped"
    pump.close()
    # The sink reads nothing until the server, past the close timeout, has dropped it.
    wait_until(lambda: ask_stats(server)["connections"] == 1, what="the slow consumer dropped")
    assert sink.frames_until_closed(timeout=10)[-1][0] == OP_CLOSE
    # Server shutdown: 1001 to an idle client.
    idle = RawClient(server.port)
    idle.upgrade("/sink")
    wait_until(lambda: ask_stats(server)["connections"] == 2, what="the idle client registered")
    server.proc.terminate()
    assert idle.close_code(timeout=10) == 1001
    server.proc.wait(10)  # its log is whole once it has exited
    no_traceback(server)


# -- the log ----------------------------------------------------------------------


def test_a_flood_of_bad_clients_does_not_flood_the_log(serve):
    server = serve(WS_LOG_BURST="10", WS_LOG_INTERVAL="3")
    for _ in range(200):
        raw = RawClient(server.port)
        raw.upgrade("/echo")
        raw.send_frame(OP_TEXT, b"\xc3\x28")
        assert raw.close_code() == 1007
        raw.close()
    log = server.log()
    assert log.count("protocol error from") == 10
    # Once the window has passed, the next such line comes after one summary of the rest.
    time.sleep(3.5)
    raw = RawClient(server.port)
    raw.upgrade("/echo")
    raw.send_frame(OP_TEXT, b"\xc3\x28")
    assert raw.close_code() == 1007
    log = server.wait_for_log("suppressed 190 similar lines (protocol error)")
    assert log.count("protocol error from") == 11


def test_a_flood_of_refused_handshakes_does_not_flood_the_log(serve):
    server = serve(WS_LOG_BURST="10", WS_LOG_INTERVAL="600")
    for _ in range(100):
        raw = RawClient(server.port)
        assert raw.upgrade("/no-such-route").startswith(b"HTTP/1.1 404")
        raw.close()
    healthy = RawClient(server.port)
    assert healthy.upgrade("/echo").startswith(b"HTTP/1.1 101")
    healthy.close()
    assert server.log().count("refused WebSocket /no-such-route") == 10


def test_a_flood_that_stops_still_gets_its_summary_line(serve):
    server = serve(WS_LOG_BURST="5", WS_LOG_INTERVAL="4", WS_PING_INTERVAL="0.5", WS_PING_TIMEOUT="0.5")
    for _ in range(50):
        raw = RawClient(server.port)
        raw.upgrade("/echo")
        raw.send_frame(OP_TEXT, b"\xc3\x28")
        assert raw.close_code() == 1007
        raw.close()

    def accounted() -> int:
        log = server.log()
        summaries = re.findall(r"suppressed (\d+) similar lines \(protocol error\)", log)
        return log.count("protocol error from") + sum(map(int, summaries))

    # No further bad client comes: the periodic sweep writes the summary of the lines held back.
    deadline = time.monotonic() + 20
    while accounted() < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert accounted() == 50
