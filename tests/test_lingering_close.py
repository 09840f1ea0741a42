"""A client still writing at full speed when the server closes it reads the close frame (a lingering close).

Without one, the server's socket is closed with the client's bytes unread,
and the kernel answers with a reset: on a real network it can overtake the
close frame, and on loopback the client's read ends in ``ECONNRESET`` instead
of the end of the stream.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.raw_client import OP_CLOSE, RawClient
from tests.server_frames import client_frame, close_code, parse_server_frames
from tests.test_hostile_clients import hostile_serve

pytestmark = pytest.mark.timeout(60)

OP_BINARY, OP_CONTINUATION = 0x2, 0x0


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory):
    """The hostile-clients app with a 64 KiB message limit."""
    proc = hostile_serve(tmp_path_factory.mktemp("linger"), WS_MAX_MESSAGE_SIZE="65536")
    yield proc
    proc.stop()


def write_until_told(raw: RawClient, stop: threading.Event) -> None:
    """One message that never ends, in 16 KiB frames as fast as the socket takes them, until ``stop``."""
    chunk = b"x" * 16384
    frame = client_frame(OP_CONTINUATION, chunk, fin=False)
    try:
        raw.sock.sendall(client_frame(OP_BINARY, chunk, fin=False))
        while not stop.is_set():
            raw.sock.sendall(frame)
    except OSError:
        pass


def read_close_then_end(raw: RawClient, stop: threading.Event) -> tuple[int | None, str]:
    """Read until the close frame, stop writing and answer it, then read to the end: its code, and how it ended."""
    buffer = raw.buffer
    code = None
    while True:
        try:
            chunk = raw.sock.recv(65536)
        except ConnectionResetError:
            return code, "reset"
        if not chunk:
            return code, "end of stream"
        frames, buffer = parse_server_frames(buffer + chunk)
        for opcode, payload in frames:
            if opcode == OP_CLOSE and code is None:
                code = close_code(payload)
                stop.set()
                time.sleep(0.05)  # the writer's frame in flight goes out whole before the answer
                try:
                    raw.sock.sendall(client_frame(OP_CLOSE, payload))
                    raw.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    return code, "reset"


@pytest.mark.parametrize("attempt", range(5))
def test_a_client_writing_at_full_speed_reads_its_1009_and_a_clean_end(small_limit_server, attempt):
    raw = RawClient(small_limit_server.port, timeout=20)
    assert raw.upgrade("/echo").startswith(b"HTTP/1.1 101")
    stop = threading.Event()
    writer = threading.Thread(target=write_until_told, args=(raw, stop), daemon=True)
    writer.start()
    try:
        code, ending = read_close_then_end(raw, stop)
    finally:
        stop.set()
        writer.join(20)
        raw.close()
    assert code == 1009
    assert ending == "end of stream"
