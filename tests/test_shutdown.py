"""Graceful shutdown: on SIGTERM the server stops accepting, flushes each client's queue,
then says 1001 "server shutting down", and exits 0 within its deadline.
"""

from __future__ import annotations

import signal
import socket
import struct
import time

import pytest

from tests.asok_project import project_env
from tests.conftest import asok_serve
from tests.fanout_clients import handshake, masked_text, split_frames

MESSAGES = 60
SIZE = 8000


def backlogged_client(port: int) -> socket.socket:
    """A client of /echo with about 480 KB of echoes queued for it on the server, unread."""
    sock = handshake(port, "/echo", rcvbuf=4096)
    for n in range(MESSAGES):
        sock.sendall(masked_text(b"%03d:" % n + b"e" * SIZE))
    time.sleep(1.0)  # let the server read and answer every message
    return sock


def read_all(sock: socket.socket, timeout: float = 10) -> list[tuple[int, bytes]]:
    """Every frame until the close frame: ``(opcode, first 32 payload bytes)``."""
    frames = []
    buf = bytearray()
    sock.settimeout(timeout)
    while not frames or frames[-1][0] != 0x8:
        data = sock.recv(1 << 20)
        assert data, f"connection dropped after {len(frames)} frames"
        buf += data
        frames += split_frames(buf)
    return frames


def assert_refused(port: int, within: float = 3) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.05)
    raise AssertionError("the server still accepts connections")


@pytest.fixture
def server(project, tmp_path):
    proc = asok_serve(project, tmp_path, env=project_env(WS_SEND_BUFFER="16384"))
    yield proc
    proc.stop()


@pytest.mark.timeout(60)
def test_queued_messages_arrive_before_1001_and_the_server_exits_0(server):
    client = backlogged_client(server.port)
    server.proc.send_signal(signal.SIGTERM)
    assert_refused(server.port)
    frames = read_all(client)
    *echoes, (opcode, close) = frames
    assert [head[:4] for _, head in echoes] == [b"%03d:" % n for n in range(MESSAGES)]
    assert opcode == 0x8
    assert struct.unpack("!H", close[:2])[0] == 1001
    assert close[2:] == b"server shutting down"
    client.sendall(b"\x88\x82" + b"\x00" * 4 + struct.pack("!H", 1001))  # the client's close, masked with zeros
    assert server.proc.wait(5) == 0


@pytest.mark.timeout(60)
def test_client_that_never_reads_is_dropped_at_the_deadline(server):
    stuck = backlogged_client(server.port)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    elapsed = time.monotonic() - started
    assert 3 < elapsed < 6.5  # the default deadline is 4 s
    assert "dropping 1 WebSocket(s) that did not close" in server.log()
    stuck.close()
