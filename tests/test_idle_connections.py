"""An idle connection has no greenlet of its own, and exactly one file descriptor.

The server runs in this process (gevent sockets) so its greenlets and file
descriptors can be counted. After the handshake and on_connect, the greenlet
that accepted a connection ends; data from the client wakes a short-lived
reader greenlet, which runs the handlers in order and ends once the socket
is drained.
"""

from __future__ import annotations

import base64
import os

import gevent
import gevent.socket
import pytest
from gevent.event import Event

from asok_green.api.serving import make_server
from asok_green.protocol.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from asok_green.server import hub as hub_module
from asok_green.server import inbound as inbound_module
from asok_green.server.hub import WebSocketServer
from tests.conftest import greenlet_count
from tests.server_frames import client_frame, parse_server_frames

pytestmark = pytest.mark.timeout(60)

KEY = base64.b64encode(b"0123456789abcdef").decode()

#: Seconds the blocking handler waits to be released by another connection's handler.
RELEASE_WITHIN = 10.0


def page(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page"]


@pytest.fixture
def served():
    ws = WebSocketServer(allowed_origins=["http://idle.test"])
    events = {"waiting": Event(), "released": Event(), "disconnected": []}

    @ws.on("/echo")
    def echo(conn, message):
        conn.send(message)

    @ws.on_connect("/greet")
    def greet(conn):
        conn.send("hello")

    @ws.on("/wait")
    def wait(conn, message):
        events["waiting"].set()
        # A handler that blocks, as a database call would. It can only be released
        # by another connection's handler, so it times out if handlers run one at a time.
        conn.send("released" if events["released"].wait(RELEASE_WITHIN) else "timed out")

    @ws.on("/release")
    def release(conn, message):
        events["released"].set()
        conn.send("done")

    @ws.on_disconnect("/echo")
    def gone(conn):
        events["disconnected"].append(conn.close_code)

    server = make_server(page, ws, "127.0.0.1", 0)
    gevent.sleep(0.05)
    yield server, ws, events
    server.close()
    ws.stop()
    hub_module._INSTANCES.remove(ws)


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


class Client:
    """A raw WebSocket client driven from the test's own greenlet."""

    def __init__(self, port: int, path: str, leftover: bytes = b""):
        self.sock = gevent.socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(5)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: idle.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://idle.test\r\n\r\n"
        )
        self.sock.sendall(request.encode() + leftover)
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = b""
        self.frames: list[tuple[int, bytes]] = []

    def send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(client_frame(opcode, payload))

    def recv(self) -> tuple[int, bytes]:
        while not self.frames:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.buffer += data
            frames, self.buffer = parse_server_frames(self.buffer)
            self.frames.extend(frames)
        return self.frames.pop(0)

    def close(self) -> None:
        self.sock.close()


def settle(server, ws, count: int) -> None:
    with gevent.Timeout(5):
        while ws.connection_count != count:
            gevent.sleep(0.01)
    gevent.sleep(0.05)


def test_an_idle_connection_has_no_greenlet_of_its_own(served):
    server, ws, _ = served
    before = greenlet_count()
    clients = [Client(server.server_port, "/echo") for _ in range(20)]
    settle(server, ws, 20)
    assert greenlet_count() == before
    for client in clients:
        client.close()
    settle(server, ws, 0)


def test_an_idle_connection_holds_one_file_descriptor(served):
    server, ws, _ = served
    before = open_files()
    clients = [Client(server.server_port, "/echo") for _ in range(10)]
    settle(server, ws, 10)
    assert open_files() == before + 2 * len(clients)  # the client's socket and the server's
    for client in clients:
        client.close()
    settle(server, ws, 0)
    assert open_files() == before


def test_a_message_wakes_a_reader_that_ends_once_the_client_goes_quiet(served):
    server, ws, _ = served
    client = Client(server.server_port, "/echo")
    settle(server, ws, 1)
    before = greenlet_count()
    client.send(OP_TEXT, b"ping?")
    assert client.recv() == (OP_TEXT, b"ping?")
    assert greenlet_count() == before + 1  # the reader waits a moment for more
    with gevent.Timeout(inbound_module._LINGER + 10, AssertionError("the reader of a quiet client never ended")):
        while greenlet_count() != before:
            gevent.sleep(0.05)
    client.close()


def test_a_burst_of_messages_is_handled_in_order(served):
    server, ws, _ = served
    client = Client(server.server_port, "/echo")
    client.sock.sendall(b"".join(client_frame(OP_TEXT, b"m%d" % i) for i in range(200)))
    assert [client.recv() for _ in range(200)] == [(OP_TEXT, b"m%d" % i) for i in range(200)]
    client.close()


def test_data_sent_with_the_handshake_is_handled(served):
    server, ws, _ = served
    client = Client(server.server_port, "/echo", leftover=client_frame(OP_TEXT, b"early"))
    assert client.recv() == (OP_TEXT, b"early")
    client.close()


def test_on_connect_may_send_before_the_connection_is_watched(served):
    server, ws, _ = served
    client = Client(server.server_port, "/greet")
    assert client.recv() == (OP_TEXT, b"hello")
    client.send(OP_PING, b"still there?")
    assert client.recv() == (OP_PONG, b"still there?")
    client.close()


def test_a_blocking_handler_delays_only_its_own_connection(served):
    server, ws, events = served
    waiting = Client(server.server_port, "/wait")
    releasing = Client(server.server_port, "/release")
    for client in (waiting, releasing):
        client.sock.settimeout(RELEASE_WITHIN + 5)  # long enough to tell "released" from "timed out"
    waiting.send(OP_TEXT, b"wait")
    waiting.send(OP_PING, b"queued behind the handler")
    assert events["waiting"].wait(5), "the blocking handler never started"
    # Its handler is blocked now: only a handler of another connection can release it.
    releasing.send(OP_TEXT, b"go")
    assert releasing.recv() == (OP_TEXT, b"done")
    assert waiting.recv() == (OP_TEXT, b"released")
    assert waiting.recv() == (OP_PONG, b"queued behind the handler")
    waiting.close()
    releasing.close()


def test_the_closing_handshake_ends_the_connection(served):
    server, ws, events = served
    before = greenlet_count()
    client = Client(server.server_port, "/echo")
    settle(server, ws, 1)
    client.send(OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.recv() == (OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.sock.recv(1) == b""
    settle(server, ws, 0)
    assert events["disconnected"] == [1000]
    assert greenlet_count() == before
    client.close()


def test_a_vanished_client_ends_the_connection_as_abnormal(served):
    server, ws, events = served
    client = Client(server.server_port, "/echo")
    settle(server, ws, 1)
    client.close()
    settle(server, ws, 0)
    assert events["disconnected"] == [1006]


def test_shutdown_closes_watched_connections_with_1001(served):
    server, ws, _ = served
    client = Client(server.server_port, "/echo")
    settle(server, ws, 1)
    stopping = gevent.spawn(server.shutdown, 5)
    opcode, payload = client.recv()
    assert (opcode, payload[:2]) == (OP_CLOSE, (1001).to_bytes(2, "big"))
    client.send(OP_CLOSE, payload[:2])
    stopping.join(5)
    assert server.stopped.is_set()
    assert ws.connection_count == 0
    client.close()
