"""Broadcasts handled in one loop turn reach each client in one send, in order, before any close.

A real ``asok serve --gevent`` process. The subscriber's socket sends are counted
by wrapping the connection's non-blocking send in the app (``conn._try_send``):
twenty broadcasts that arrive in one TCP write are handled in one turn, and the
subscriber must get them in a few sends, not twenty. Direct sends and a close
in the same turn keep their place among the held broadcasts.
"""

from __future__ import annotations

import pytest

from tests.asok_project import make_project
from tests.conftest import asok_serve
from tests.raw_client import OP_CLOSE, OP_TEXT, RawClient
from tests.server_frames import client_frame, close_code, parse_server_frames

pytestmark = pytest.mark.timeout(60)

BURST = 20

HANDLERS = """
_sends = {}


@ws.on_connect("/fan")
def count_sends(conn):
    send = conn._try_send
    _sends[id(conn)] = 0

    def counted(data):
        _sends[id(conn)] += 1
        return send(data)

    conn._try_send = counted


@ws.on("/fan")
def fan(conn, message):
    if message == "count?":
        count = _sends[id(conn)]
        conn.send("sends:%d" % count)
    else:
        ws.broadcast("/fan", message)


@ws.on("/mix")
def mix(conn, message):
    ws.broadcast("/mix", "b1")
    conn.send("d1")
    ws.broadcast("/mix", "b2")
    conn.send("d2")
    ws.broadcast("/mix", "b3")
    conn.close(4000, "done")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("coalescing"), extra_wsgi=HANDLERS)
    proc = asok_serve(project, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


def texts(frames):
    return [payload.decode() for op, payload in frames if op == OP_TEXT]


def read_texts(client: RawClient, count: int) -> list[str]:
    """The next ``count`` text frames the client gets (presence frames skipped)."""
    got: list[str] = []
    while len(got) < count:
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"got only {got!r}") from None
        assert chunk, f"connection closed after {got!r}"
        frames, client.buffer = parse_server_frames(client.buffer + chunk)
        got.extend(t for t in texts(frames) if not t.startswith("{"))
    return got


def test_broadcasts_of_one_turn_reach_a_client_in_one_send_and_in_order(server):
    subscriber = RawClient(server.port)
    assert b" 101 " in subscriber.upgrade("/fan")
    sender = RawClient(server.port)
    assert b" 101 " in sender.upgrade("/fan")
    try:
        messages = [f"m{i}" for i in range(BURST)]
        # One TCP write: the server reads and handles all of them in one turn.
        sender.sock.sendall(b"".join(client_frame(OP_TEXT, m.encode()) for m in messages))
        assert read_texts(subscriber, BURST) == messages
        subscriber.send_frame(OP_TEXT, b"count?")
        (answer,) = read_texts(subscriber, 1)
        sends = int(answer.split(":")[1])
        # The first broadcast of the turn goes straight out, the rest together: one send each is 20.
        assert sends <= 4, f"{BURST} broadcasts of one turn took {sends} sends"
    finally:
        subscriber.close()
        sender.close()


def test_direct_sends_and_a_close_keep_their_place_among_held_broadcasts(server):
    client = RawClient(server.port)
    assert b" 101 " in client.upgrade("/mix")
    try:
        client.send_frame(OP_TEXT, b"go")
        frames = client.frames_until_closed(timeout=20)
        assert [t for t in texts(frames) if not t.startswith("{")] == ["b1", "d1", "b2", "d2", "b3"]
        assert frames[-1][0] == OP_CLOSE
        assert close_code(frames[-1][1]) == 4000
    finally:
        client.close()
