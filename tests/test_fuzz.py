"""Property: whatever bytes a client sends, the server survives and forgets it.

The server runs in this process (gevent sockets, no monkey-patching needed) so
its registry and greenlets can be counted before and after. Hypothesis feeds
mutated handshakes and random frame sequences; after each connection the
client stops sending, and the server must end the connection, leaving no
registry entry and no greenlet behind.
"""

from __future__ import annotations

import base64
import socket as stdlib_socket

import gevent
import gevent.socket
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asok_green.api.serving import make_server
from asok_green.bridge import live as ops
from asok_green.server import hub as hub_module
from asok_green.server.hub import WebSocketServer
from tests.conftest import greenlet_count
from tests.server_frames import client_frame

pytestmark = pytest.mark.timeout(300)

KEY = base64.b64encode(b"0123456789abcdef").decode()


def page(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page"]


@pytest.fixture(scope="module")
def live_server():
    ws = WebSocketServer(allowed_origins=["http://fuzz.test"], max_message_size=4096, close_timeout=0.5)

    @ws.on("/echo")
    def echo(conn, message):
        conn.send(message)

    @ws.on("/chat/[room]")
    def chat(conn, message):
        ws.broadcast(conn.path, message)

    ws.on("/asok/live")(ops.on_live_message)
    ws.room_authorizer(lambda conn, room: True)
    server = make_server(page, ws, "127.0.0.1", 0)
    gevent.sleep(0.05)
    server.baseline_greenlets = greenlet_count()
    yield server, ws
    server.close()
    ws.stop()
    hub_module._INSTANCES.remove(ws)


def exchange(port: int, data: bytes) -> None:
    """Send ``data``, stop sending, and read until the server closes (or fail after 5 s)."""
    sock = gevent.socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(data)
        sock.shutdown(stdlib_socket.SHUT_WR)
        with gevent.Timeout(5, AssertionError("the server kept a finished client open")):
            while sock.recv(65536):
                pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()


def handshake(path: str = "/echo", headers: dict[str, str] | None = None) -> bytes:
    base = {
        "Host": "fuzz.test",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
        "Origin": "http://fuzz.test",
    }
    base.update(headers or {})
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in base.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


header_names = st.sampled_from(
    ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin", "Cookie"]
)
header_values = st.one_of(st.none(), st.text(max_size=40).map(lambda t: t.replace("\r", "").replace("\n", "")))
paths = st.one_of(
    st.sampled_from(["/echo", "/chat/room1", "/asok/live", "/nope", "/chat/", "/"]),
    st.text(alphabet="/abc[]%?#.", min_size=1, max_size=30).map(lambda t: "/" + t),
)


@st.composite
def mutated_handshakes(draw) -> bytes:
    request = handshake(draw(paths), draw(st.dictionaries(header_names, header_values, max_size=3)))
    cut = draw(st.integers(0, len(request)))
    junk = draw(st.binary(max_size=30))
    return draw(st.sampled_from([request, request[:cut], request[:cut] + junk + request[cut:]]))


@st.composite
def frames(draw) -> bytes:
    opcode = draw(st.one_of(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]), st.integers(0, 15)))
    payload = draw(
        st.one_of(
            st.binary(max_size=200),
            st.text(max_size=60).map(str.encode),
            st.sampled_from([b'{"op":"join_room","room":"r"}', b'{"op":"typing","room":"r"}', b"{bad json", b"[]"]),
        )
    )
    frame = client_frame(
        opcode, payload, fin=draw(st.booleans()), mask=draw(st.booleans()), rsv=draw(st.integers(0, 7))
    )
    if draw(st.integers(0, 9)) == 0:
        frame = frame[: draw(st.integers(0, len(frame)))]
    return frame


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated_handshakes())
def test_mutated_handshakes_never_hurt_the_server(live_server, data):
    server, ws = live_server
    exchange(server.server_port, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/echo", "/chat/room1", "/asok/live"]), body=st.lists(frames(), max_size=6))
def test_random_frames_never_hurt_the_server(live_server, path, body):
    server, ws = live_server
    exchange(server.server_port, handshake(path) + b"".join(body))


def test_nothing_is_left_behind_and_the_server_still_answers(live_server):
    """Runs after the property tests: the registry is empty and the greenlets are as before them."""
    server, ws = live_server
    for body in (b"", client_frame(0x1, b"hi"), client_frame(0x1, b"\xff"), b"\x81"):
        for path in ("/echo", "/chat/a", "/asok/live"):
            exchange(server.server_port, handshake(path) + body)
    with gevent.Timeout(5, AssertionError("connections or greenlets left behind")):
        while ws.connection_count or greenlet_count() > server.baseline_greenlets:
            gevent.sleep(0.05)
    assert ws.connections() == []
    assert ws.state.is_empty()
    sock = gevent.socket.create_connection(("127.0.0.1", server.server_port))
    sock.sendall(handshake("/echo") + client_frame(0x1, b"still here"))
    with gevent.Timeout(5):
        answer = b""
        while not answer.endswith(b"still here"):
            answer += sock.recv(4096)
    sock.close()
