"""A connection that has spoken and gone quiet holds no more than one that never spoke.

Idle memory is what a quiet connection holds after its client has talked: a
message sent, a broadcast received, a keep-alive ping answered. The server
runs in this process, so its connections' slots and the objects that refer to
them can be inspected once the client is quiet again: no reader (greenlet,
frame parser, inflater), no send queue, no buffer. A pong is handled without
a reader at all, and clients that speak at the same instant are served by a
few readers, not one greenlet each.
"""

from __future__ import annotations

import base64
import collections
import gc
import zlib

import gevent
import gevent.socket
import greenlet
import pytest

from asok_green.api.serving import make_server
from asok_green.api.websocket_server import WebSocketServer
from asok_green.protocol.deflate import Inflater
from asok_green.protocol.frames import OP_PING, OP_PONG, OP_TEXT, MessageReader
from asok_green.server import hub as hub_module
from asok_green.server.connection import Connection
from tests.conftest import greenlet_count
from tests.server_frames import client_frame, split_server_frame

pytestmark = pytest.mark.timeout(60)

KEY = base64.b64encode(b"0123456789abcdef").decode()
ORIGIN = "http://quiet.test"

#: Seconds allowed for anything the server does in reply (generous: the machine is shared).
DEADLINE = 15.0

#: Objects that are a reader's or a queue's state: none may stay on a quiet connection.
READ_STATE = (MessageReader, Inflater, collections.deque, bytearray, memoryview, greenlet.greenlet)


def page(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page"]


@pytest.fixture
def served():
    # Pings every few tenths of a second, and a long time to answer them.
    ws = WebSocketServer(allowed_origins=[ORIGIN], ping_interval=0.3, ping_timeout=60)
    first_call: list[int] = []

    @ws.on("/echo")
    def echo(conn, message):
        conn.send(message)

    @ws.on("/crowd")
    def crowd(conn, message):
        if not first_call:
            first_call.append(greenlet_count())  # greenlets alive when the first reader runs
        conn.send(message)

    server = make_server(page, ws, "127.0.0.1", 0)
    gevent.sleep(0.05)
    yield server, ws, first_call
    server.close()
    ws.stop()
    hub_module._INSTANCES.remove(ws)


class Client:
    """A raw WebSocket client in the test's own greenlet; ``deflate``: offers permessage-deflate."""

    def __init__(self, port: int, path: str, deflate: bool = False):
        self.sock = gevent.socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(DEADLINE)
        extensions = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: quiet.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n{extensions}\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert (b"permessage-deflate" in head) == deflate, head
        self.buffer = b""

    def send(self, opcode: int, payload: bytes, compress: bool = False) -> None:
        if compress:
            deflater = zlib.compressobj(wbits=-15)
            payload = (deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
        self.sock.sendall(client_frame(opcode, payload, rsv=4 if compress else 0))

    def recv(self) -> tuple[int, bytes]:
        """The next frame from the server, inflated if it came compressed."""
        while (split := split_server_frame(self.buffer)) is None:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.buffer += data
        (_, rsv1, opcode, payload), self.buffer = split
        if rsv1:
            payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
        return opcode, payload

    def recv_data(self) -> bytes:
        """The next data frame's payload, answering the server's pings on the way."""
        while True:
            opcode, payload = self.recv()
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_TEXT:
                return payload

    def answer_a_ping(self) -> None:
        """Wait for the server's next ping and answer it."""
        while True:
            opcode, payload = self.recv()
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                return

    def close(self) -> None:
        self.sock.close()


def wait_for(condition, what: str) -> None:
    with gevent.Timeout(DEADLINE, AssertionError(f"gave up waiting: {what}")):
        while not condition():
            gevent.sleep(0.02)


def the_connection(ws: WebSocketServer, path: str) -> Connection:
    wait_for(lambda: len(ws.connections(path)) == 1, "the connection to register")
    return ws.connections(path)[0]


def slots_of(conn: Connection) -> dict:
    """Every slot of ``conn`` that holds a value, by name."""
    names = {name for cls in type(conn).__mro__ for name in getattr(cls, "__slots__", ())}
    return {name: getattr(conn, name) for name in names - {"__dict__", "__weakref__"} if hasattr(conn, name)}


def greenlets_holding(conn: Connection) -> list[str]:
    """Live greenlets (other than this one) that hold ``conn``: in a frame of their stack, or in what they run."""
    found = []
    for obj in gc.get_objects():
        # type() rather than isinstance: the garbage collector also lists dead weak proxies.
        if not issubclass(type(obj), greenlet.greenlet) or obj.dead or obj is greenlet.getcurrent():
            continue
        frame = obj.gr_frame
        while frame is not None:
            if any(value is conn for value in frame.f_locals.values()):
                found.append(f"{obj!r} in {frame.f_code.co_name}")
                break
            frame = frame.f_back
        for part in (getattr(obj, "_run", None), *getattr(obj, "args", ())):
            if part is conn or getattr(part, "__self__", None) is conn:
                found.append(f"{obj!r} runs {part!r}")
    return found


def read_state_held(conn: Connection) -> dict:
    """Slots of ``conn`` holding reader or queue state, and greenlets that hold it."""
    held = {name: type(value).__name__ for name, value in slots_of(conn).items() if isinstance(value, READ_STATE)}
    for holder in greenlets_holding(conn):
        held[holder] = "greenlet"
    return held


def no_greenlet_holds(conn: Connection) -> bool:
    return not greenlets_holding(conn)


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
def test_a_connection_that_spoke_holds_no_read_state_once_quiet(served, deflate):
    server, ws, _ = served
    client = Client(server.server_port, "/echo", deflate=deflate)
    conn = the_connection(ws, "/echo")
    # One message each way: the client's (echoed), then two broadcasts in one
    # loop turn (the second one is held back and sent with the first's turn end).
    client.send(OP_TEXT, b"hello" * 50, compress=deflate)
    assert client.recv_data() == b"hello" * 50
    ws.broadcast("/echo", "one")
    ws.broadcast("/echo", "two")
    assert [client.recv_data(), client.recv_data()] == [b"one", b"two"]
    client.answer_a_ping()
    # Quiet now: whatever read it lets go of the connection (a reader may wait a moment for more).
    wait_for(lambda: no_greenlet_holds(conn), "the reader to let go of the quiet connection")
    assert read_state_held(conn) == {}
    client.close()


def test_a_pong_is_read_without_a_reader_greenlet(served):
    server, ws, _ = served
    client = Client(server.server_port, "/echo")
    conn = the_connection(ws, "/echo")
    client.send(OP_TEXT, b"spoke once")
    assert client.recv_data() == b"spoke once"
    wait_for(lambda: no_greenlet_holds(conn), "the reader of the message to end")
    for _ in range(3):
        before = greenlet_count()
        seen = conn.last_seen
        client.answer_a_ping()
        wait_for(lambda seen=seen: conn.last_seen != seen, "the server to read the pong")
        assert greenlet_count() == before
        assert read_state_held(conn) == {}
    client.close()


def test_clients_speaking_at_the_same_instant_share_a_few_readers(served):
    server, ws, first_call = served
    clients = [Client(server.server_port, "/crowd") for _ in range(100)]
    wait_for(lambda: len(ws.connections("/crowd")) == len(clients), "every client to register")
    before = greenlet_count()
    for client in clients:  # no yield between these: the server sees them all in one turn
        client.send(OP_TEXT, b"all at once")
    for client in clients:
        assert client.recv_data() == b"all at once"
    # One greenlet per speaking client would be a hundred at once.
    assert first_call[0] - before <= 3, f"{first_call[0] - before} greenlets more while the crowd was read"
    wait_for(lambda: greenlet_count() == before, "the readers to end")
    for conn in ws.connections("/crowd"):
        assert read_state_held(conn) == {}
    for client in clients:
        client.close()
