"""Request bodies must keep coming: a stalled, trickled or cut-short body ends in 408/400 and a close, no traceback.

Against ``tests/hostile_app.py`` with a one-second body timeout, so every
deadline passes in seconds; the tests wait for the server's answer, never
for a time.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.test_hostile_clients import hostile_serve

pytestmark = pytest.mark.timeout(90)

STALLED = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nhello"


@pytest.fixture(scope="module")
def body_server(tmp_path_factory):
    """The hostile-clients app with a one-second body timeout and a 200 bytes/s minimum rate."""
    proc = hostile_serve(tmp_path_factory.mktemp("body"), WS_BODY_TIMEOUT="1", WS_BODY_MIN_RATE="200")
    yield proc
    proc.stop()


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a test timeout if it never does)."""
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return received


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_stalled_body_gets_408_and_a_close(body_server):
    with socket.create_connection(("127.0.0.1", body_server.port), timeout=60) as sock:
        sock.sendall(STALLED)
        received = answer(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert "Traceback" not in body_server.log()


def test_a_body_trickled_below_the_minimum_rate_gets_408(body_server):
    with socket.create_connection(("127.0.0.1", body_server.port), timeout=60) as sock:
        sock.sendall(STALLED)
        closed = threading.Event()

        def trickle():
            # One byte every 0.2 s: never silent for the 1 s timeout, far below 200 bytes/s.
            while not closed.is_set():
                try:
                    sock.send(b"x")
                except OSError:
                    return
                time.sleep(0.2)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            received = answer(sock)
        finally:
            closed.set()
            sender.join()
    assert received.startswith(b"HTTP/1.1 408 "), received


def test_a_body_cut_short_gets_400_never_a_500_or_a_traceback(body_server):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", body_server.port), timeout=60) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
            sock.shutdown(socket.SHUT_WR)
            received = answer(sock)
        assert received == b"" or received.startswith(b"HTTP/1.1 400 "), received
    log = body_server.log()
    assert "Traceback" not in log and " 500 " not in log


def test_many_stalled_bodies_are_all_closed_and_their_sockets_freed(body_server):
    pid = body_server.proc.pid
    before = open_files(pid)
    clients = [socket.create_connection(("127.0.0.1", body_server.port), timeout=60) for _ in range(300)]
    try:
        for sock in clients:
            sock.sendall(STALLED)
        wait_until(lambda: open_files(pid) >= before + 250, 30, "the server to hold the stalled bodies")
        for sock in clients:
            assert answer(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: open_files(pid) <= before + 5, 30, "the server to free the stalled bodies' sockets")
