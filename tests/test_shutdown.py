"""Graceful shutdown: on SIGTERM the server stops accepting, flushes each client's queue,
then says 1001 "server shutting down", and exits 0 by its deadline.

The deadline (``WS_SHUTDOWN_TIMEOUT``, 4 s by default) is checked without a
clock: the server's close timeout is set far beyond the time a test waits for
the process to exit (``EXIT_WITHIN``), and the unresponsive clients stay open
all that time, so a server that waited for them, or for their close timeout,
would never exit within it.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time

import pytest

from tests.asok_project import project_env
from tests.conftest import ServerProcess, asok_serve
from tests.fanout_clients import handshake, masked_text, message_number, split_frames

MESSAGES = 60
SIZE = 8000
#: Seconds a test waits for the server to exit after SIGTERM: far more than its 4 s deadline.
EXIT_WITHIN = 30
#: Seconds the server waits for a client's answer to its close frame: far more than EXIT_WITHIN.
CLOSE_TIMEOUT = 3600
CLIENT_CLOSE_1001 = b"\x88\x82" + b"\x00" * 4 + struct.pack("!H", 1001)  # masked with zeros


class FrameReader:
    """The frames a socket receives, parsed as they come: ``(opcode, first 32 payload bytes)``."""

    def __init__(self, sock: socket.socket, timeout: float = 10):
        self.sock = sock
        self.buf = bytearray()
        sock.settimeout(timeout)

    def next_frames(self) -> list[tuple[int, bytes]]:
        """The frames completed by the next chunk the server sends."""
        data = self.sock.recv(1 << 20)
        assert data, "the connection was dropped"
        self.buf += data
        return split_frames(self.buf)

    def until_close(self) -> list[tuple[int, bytes]]:
        """Every frame up to and including the close frame."""
        frames = []
        while not frames or frames[-1][0] != 0x8:
            frames += self.next_frames()
        return frames

    def messages(self, count: int) -> None:
        """Read until ``count`` chat messages have arrived."""
        seen = 0
        while seen < count:
            seen += sum(message_number(head) is not None for _, head in self.next_frames())


def backlogged_client(port: int, room: str) -> tuple[socket.socket, FrameReader]:
    """A chat client with about 480 KB of messages queued for it on the server, unread; and a reader.

    The client sends ``MESSAGES`` messages to ``room`` and reads nothing; the
    reader, in the same room, reads every one of them, so once it has them all
    the server has queued them all for the client.
    """
    reader = FrameReader(handshake(port, room))
    sock = handshake(port, room, rcvbuf=4096)
    for n in range(MESSAGES):
        sock.sendall(masked_text(b"%03d:" % n + b"e" * SIZE))
    reader.messages(MESSAGES)
    return sock, reader


def answer_close(reader: FrameReader) -> None:
    """Read up to the server's close frame (1001) and answer it, as a well-behaved client does."""
    *_, (opcode, close) = reader.until_close()
    assert (opcode, close[:2]) == (0x8, struct.pack("!H", 1001))
    reader.sock.sendall(CLIENT_CLOSE_1001)


def assert_exits_0(server: ServerProcess) -> None:
    try:
        code = server.proc.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit within {EXIT_WITHIN}s of SIGTERM:\n{server.log()}") from None
    assert code == 0, server.log()


def assert_refused(port: int, within: float = 10) -> None:
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
    env = project_env(WS_SEND_BUFFER="16384", WS_CLOSE_TIMEOUT=str(CLOSE_TIMEOUT))
    proc = asok_serve(project, tmp_path, env=env)
    yield proc
    proc.stop()


@pytest.mark.timeout(60)
def test_queued_messages_arrive_before_1001_and_the_server_exits_0(server):
    client, reader = backlogged_client(server.port, "/chat/flushed")
    server.proc.send_signal(signal.SIGTERM)
    assert_refused(server.port)
    frames = FrameReader(client).until_close()  # the server waits for this client to read its backlog
    *messages, (opcode, close) = frames
    assert [message_number(head) for _, head in messages] == list(range(MESSAGES))
    assert opcode == 0x8
    assert struct.unpack("!H", close[:2])[0] == 1001
    assert close[2:] == b"server shutting down"
    client.sendall(CLIENT_CLOSE_1001)
    answer_close(reader)
    assert_exits_0(server)
    assert "dropping" not in server.log()


@pytest.mark.timeout(60)
def test_client_that_never_reads_is_dropped_at_the_deadline(server):
    stuck, reader = backlogged_client(server.port, "/chat/stuck")
    server.proc.send_signal(signal.SIGTERM)
    answer_close(reader)
    assert_exits_0(server)  # while the stuck client is still connected, its backlog unread
    assert "dropping 1 WebSocket(s) that did not close" in server.log()
    stuck.close()


@pytest.mark.timeout(60)
def test_client_that_never_answers_1001_is_dropped_at_the_deadline(server):
    silent = handshake(server.port, "/echo")
    server.proc.send_signal(signal.SIGTERM)
    *_, (opcode, close) = FrameReader(silent).until_close()
    assert (opcode, close) == (0x8, struct.pack("!H", 1001) + b"server shutting down")
    assert_exits_0(server)  # while the client, which never answers, is still connected
    assert "dropping 1 WebSocket(s) that did not close" in server.log()
    silent.close()
