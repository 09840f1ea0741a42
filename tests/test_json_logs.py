"""With Asok's LOG_FORMAT=json, every line the server prints is one JSON object in Asok's shape."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest
import websocket

from tests.asok_project import project_env
from tests.conftest import asok_serve, ws_connect
from tests.raw_client import RawClient

pytestmark = pytest.mark.timeout(60)


def json_lines(server) -> list[dict]:
    """Every line of the server's output, parsed; fails on a line that is not a JSON object."""
    out = []
    text = server.log_path.read_text(errors="replace") if server.proc.poll() is not None else server.log()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(entry, dict), line
        out.append(entry)
    return out


def wait_for_event(server, event: str, timeout: float = 10) -> list[dict]:
    """The lines whose event is ``event``, once there is at least one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [entry for entry in json_lines(server) if entry.get("event") == event]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} line in:\n{server.log()}")


@pytest.fixture(scope="module")
def json_server(project, tmp_path_factory):
    """The test project served with ASOK_LOG_FORMAT=json."""
    server = asok_serve(project, tmp_path_factory.mktemp("json-logs"), env=project_env(ASOK_LOG_FORMAT="json"))
    yield server
    server.stop()


def test_refused_handshake_is_one_json_line_with_its_cause(json_server):
    with pytest.raises(websocket.WebSocketBadStatusException):
        ws_connect(json_server, "/chat/room", origin="https://evil.example")
    [line] = wait_for_event(json_server, "handshake_refused")
    assert line["logger"] == "asok_green"
    assert line["level"] == "WARNING"
    assert line["status"] == 403
    assert line["cause"] == "origin"
    assert line["path"] == "/chat/room"
    assert line["origin"] == "https://evil.example"
    assert {"timestamp", "message"} <= set(line)


def test_protocol_error_is_one_json_line_with_connection_route_and_close_code(json_server):
    client = RawClient(json_server.port)
    try:
        assert client.upgrade("/echo").startswith(b"HTTP/1.1 101")
        local = client.sock.getsockname()
        client.send_frame(0x1, b"hello", mask=False)  # a client frame must be masked
        [line] = wait_for_event(json_server, "protocol_error")
    finally:
        client.sock.close()
    assert line["close_code"] == 1002
    assert line["route"] == "/echo"
    assert line["conn"] == f"{local[0]}:{local[1]}"
    assert "masked" in line["cause"]


def test_http_request_is_one_json_access_line_with_its_fields(json_server):
    with urllib.request.urlopen(json_server.url + "/?from=json-test", timeout=5) as response:
        assert response.status == 200
    deadline = time.monotonic() + 10
    lines: list = []
    while not lines and time.monotonic() < deadline:
        lines = [
            e
            for e in json_lines(json_server)
            if e["logger"] == "asok_green.access" and "json-test" in str(e.get("path"))
        ]
        time.sleep(0.05)
    [line] = lines
    assert line["event"] == "http_request"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert line["ip"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], (int, float))


def test_every_line_is_json_with_an_event_even_at_shutdown(project, tmp_path):
    server = asok_serve(project, tmp_path, env=project_env(LOG_FORMAT="json"))
    client = ws_connect(server, "/echo")
    client.close()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
        sock.recv(100)
    wait_for_event(server, "request_refused")
    assert server.stop() == 0
    lines = json_lines(server)
    assert lines, "the server printed nothing"
    assert all(entry.get("event") for entry in lines if entry["logger"].startswith("asok_green")), lines
    assert "serving" in {entry.get("event") for entry in lines}
    assert "stopped" in {entry.get("event") for entry in lines}


def test_workers_and_their_parent_print_only_json_lines(project, redis_server, tmp_path):
    from tests.cluster_support import node_env
    from tests.conftest import BIN, ServerProcess, free_port

    port = free_port()
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(port), "--workers", "2"]
    server = ServerProcess(argv, project, node_env(redis_server, LOG_FORMAT="json"), port, tmp_path / "w.log")
    try:
        server.wait_for_log("with 2 worker processes", timeout=30)
        client = ws_connect(server, "/echo")
        client.send("hi")
        assert client.recv() == "hi"
        client.close()
        with pytest.raises(websocket.WebSocketBadStatusException):
            ws_connect(server, "/no/such/route")
        wait_for_event(server, "handshake_refused")
    finally:
        server.stop()
    events = [entry.get("event") for entry in json_lines(server)]
    assert events.count("cluster_joined") == 2
    assert "serving" in events
