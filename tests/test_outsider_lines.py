"""Lines an outsider can make the server write are rate-limited: clients that connect and never send.

200 clients that open a connection (plain, or TLS without a hello) and send
nothing are dropped at the handshake timeout with at most ``WS_LOG_BURST``
lines, then one summary counting the rest.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.conftest import asok_serve, project_env, wait_until
from tests.test_hostile_clients import hostile_serve
from tests.test_tls import Certificates

pytestmark = pytest.mark.timeout(90)

CLIENTS = 200


def silent_clients(port: int) -> None:
    """Open ``CLIENTS`` connections that send nothing; wait until the server has closed every one."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(CLIENTS)]
    try:
        for sock in clients:
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for sock in clients:
            sock.close()


def dropped_lines(log: str) -> int:
    return sum(1 for line in log.splitlines() if re.search(r"dropped \('127\.0\.0\.1'", line))


def suppressed(log: str) -> int:
    return sum(int(n) for n in re.findall(r"suppressed (\d+) similar lines \(dropped\)", log))


def test_silent_plain_clients_are_dropped_with_a_bounded_number_of_lines(tmp_path):
    server = hostile_serve(tmp_path, WS_HANDSHAKE_TIMEOUT="1", WS_LOG_BURST="5", WS_LOG_INTERVAL="2")
    try:
        silent_clients(server.port)
        wait_until(lambda: dropped_lines(server.log()) + suppressed(server.log()) >= CLIENTS, 30, "the summary line")
        log = server.log()
        assert dropped_lines(log) <= 5 * 3, log[-3000:]
        assert "Traceback" not in log
    finally:
        server.stop()


def test_silent_tls_clients_are_dropped_with_a_bounded_number_of_lines(project, tmp_path):
    (tmp_path / "tls").mkdir()
    certificates = Certificates(tmp_path / "tls")
    env = dict(project_env(), WS_HANDSHAKE_TIMEOUT="1", WS_LOG_BURST="5", WS_LOG_INTERVAL="2")
    server = asok_serve(project, tmp_path, *certificates.options, env=env)
    try:
        silent_clients(server.port)
        wait_until(lambda: dropped_lines(server.log()) + suppressed(server.log()) >= CLIENTS, 30, "the summary line")
        log = server.log()
        assert dropped_lines(log) <= 5 * 3, log[-3000:]
        assert "Traceback" not in log
    finally:
        server.stop()
