"""Upgrade requests as clients really write them, against a real server: the head's parsing.

The server reads a WebSocket upgrade's head itself (asok_green.protocol.request_head)
instead of through pywsgi's ``email`` header parser; these requests must come
out as they always did: split across many TCP writes, folded, repeated,
in any letter case, with a cookie as large as the server takes, with a body.
tests/test_request_head.py compares the parser with pywsgi's own reading of the
same header blocks.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time

import pytest

from asok_green.bridge.auth import MAX_COOKIE_HEADER
from tests.asok_project import cookie_header, login, make_project
from tests.conftest import asok_serve
from tests.raw_client import OP_CLOSE, OP_TEXT, RawClient
from tests.server_frames import client_frame, parse_server_frames

#: A route that tells the client what its handshake looked like to a handler.
HEAD_ROUTES = """
import json as _json


@ws.on("/head")
def tell_head(conn, message):
    request = conn.request
    conn.send_json(
        {
            "headers": conn.headers,
            "user": conn.user.name if conn.user else None,
            "path": conn.path,
            "params": conn.params,
            "request_path": request.path,
            "request_cookies": sorted(request.cookies),
        }
    )


@ws.on("/head/[room]")
def tell_room(conn, message):
    conn.send_json({"path": conn.path, "params": conn.params})
"""


@pytest.fixture(scope="module")
def head_server(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("project"), extra_wsgi=HEAD_ROUTES)
    proc = asok_serve(project, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


def _key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def _request(path: str = "/head", *lines: str, body: bytes = b"") -> bytes:
    head = [f"GET {path} HTTP/1.1", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _standard(port: int) -> list[str]:
    return [
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {_key()}",
        "Sec-WebSocket-Version: 13",
        f"Origin: http://127.0.0.1:{port}",
    ]


class Exchange:
    """A raw connection that sends ``request`` (in pieces if asked) and reads the answer."""

    def __init__(self, port: int, request: bytes, piece: int = 0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if piece:
            for start in range(0, len(request), piece):
                self.sock.sendall(request[start : start + piece])
                time.sleep(0.002)  # each piece its own segment
        else:
            self.sock.sendall(request)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.head = head.decode("latin-1")

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def ask(self, text: str = "?") -> dict:
        """Send a text message, return the JSON the handler answers."""
        self.sock.sendall(client_frame(OP_TEXT, text.encode()))
        return self.receive()

    def receive(self) -> dict:
        """The next JSON message from a handler (presence frames skipped)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frames, self.buffer = parse_server_frames(self.buffer)
            for opcode, payload in frames:
                told = json.loads(payload) if opcode == OP_TEXT else {}
                if "path" in told:  # not a presence frame
                    return told
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self.buffer += chunk
        raise AssertionError("no answer")

    def close(self) -> None:
        self.sock.close()


# -- over the wire (these pass on pywsgi's email-parser path too) ---------------------------


def test_head_split_across_many_small_writes(head_server):
    request = _request("/head", *_standard(head_server.port), "X-Slow: one byte at a time")
    exchange = Exchange(head_server.port, request, piece=3)
    assert exchange.status == 101
    assert exchange.ask()["headers"]["x-slow"] == "one byte at a time"
    exchange.close()


def test_folded_header_lines_are_refused(head_server):
    # RFC 9112 section 5.2: a server may reject obsolete line folding with 400; it does,
    # since a proxy in front may read the folded line as a header of its own.
    port = head_server.port
    lines = [line for line in _standard(port) if not line.startswith("Connection")]
    lines += ["Connection: keep-alive,", "  Upgrade", "X-Note: first", "\tsecond"]
    assert Exchange(port, _request("/head", *lines)).status == 400


def test_repeated_headers_are_joined_and_cookies_with_semicolons(head_server):
    port = head_server.port
    cookies = login(head_server.url, "alice")
    lines = [*_standard(port), "X-Dup: a", "X-Dup: b", "Cookie: theme=dark", f"Cookie: {cookie_header(cookies)}"]
    exchange = Exchange(port, _request("/head", *lines))
    assert exchange.status == 101
    told = exchange.ask()
    assert told["headers"]["x-dup"] == "a,b"
    assert told["headers"]["cookie"] == f"theme=dark; {cookie_header(cookies)}"
    assert told["user"] == "alice"
    assert "theme" in told["request_cookies"] and "asok_session" in told["request_cookies"]
    exchange.close()


def test_header_names_in_any_case(head_server):
    port = head_server.port
    lines = [
        f"hOsT: 127.0.0.1:{port}",
        "UPGRADE: WebSocket",
        "connection: upgrade",
        f"SEC-WEBSOCKET-KEY: {_key()}",
        "sec-websocket-version: 13",
        f"oRiGiN: http://127.0.0.1:{port}",
        "X-Mixed-Case: kept as sent",
    ]
    exchange = Exchange(port, _request("/head", *lines))
    assert exchange.status == 101
    headers = exchange.ask()["headers"]
    assert headers["x-mixed-case"] == "kept as sent"
    assert headers["upgrade"] == "WebSocket" and headers["origin"] == f"http://127.0.0.1:{port}"
    assert all(name == name.lower() for name in headers)
    exchange.close()


def test_header_names_with_underscores_are_dropped(head_server):
    port = head_server.port
    lines = [*_standard(port), "X_Forwarded_For: 6.6.6.6"]
    exchange = Exchange(port, _request("/head", *lines))
    assert exchange.status == 101
    headers = exchange.ask()["headers"]
    assert "x-forwarded-for" not in headers and not any("_" in name for name in headers)
    exchange.close()


def test_cookie_header_of_the_largest_size_the_session_reader_takes(head_server):
    port = head_server.port
    session = cookie_header(login(head_server.url, "bob"))
    padding = "pad=" + "x" * (MAX_COOKIE_HEADER - len(session) - len("; pad="))
    cookie = f"{session}; {padding}"
    assert len(cookie) == MAX_COOKIE_HEADER
    exchange = Exchange(port, _request("/head", *_standard(port), f"Cookie: {cookie}"))
    assert exchange.status == 101
    told = exchange.ask()
    assert told["user"] == "bob" and len(told["headers"]["cookie"]) == MAX_COOKIE_HEADER
    exchange.close()


def test_percent_encoded_path_and_query(head_server):
    port = head_server.port
    exchange = Exchange(port, _request("/head/caf%C3%A9?x=1&y=%20", *_standard(port)))
    assert exchange.status == 101
    assert exchange.ask() == {"path": "/head/café", "params": {"room": "café"}}
    exchange.close()


def test_an_upgrade_with_a_body_is_refused(head_server):
    # Nothing in RFC 6455 gives a handshake a body: one that announces a body is
    # ambiguous (a proxy may read it as a body, the server as frames) and gets 400.
    port = head_server.port
    frame = client_frame(OP_TEXT, b"?")
    exchange = Exchange(port, _request("/head", *_standard(port), f"Content-Length: {len(frame)}", body=frame))
    assert exchange.status == 400


def test_http_1_0_upgrade_and_malformed_lines_are_answered_as_before(head_server):
    port = head_server.port
    old = _request("/head", *_standard(port)).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    assert Exchange(port, old).status == 400
    # A line the header parser cannot read ends the headers there: what follows is not a header.
    broken = _request("/head", f"Host: 127.0.0.1:{port}", "no colon here", *_standard(port)[1:])
    assert Exchange(port, broken).status != 101


def test_refusals_keep_their_status_and_headers(head_server):
    port = head_server.port
    lines = [line for line in _standard(port) if not line.startswith("Sec-WebSocket-Version")]
    lines.append("Sec-WebSocket-Version: 8")
    refused = Exchange(port, _request("/head", *lines))
    assert refused.status == 426 and "Sec-WebSocket-Version: 13" in refused.head
    headers = dict(line.split(": ", 1) for line in refused.head.split("\r\n")[1:])
    body = refused.buffer
    while len(body) < int(headers["Content-Length"]):
        chunk = refused.sock.recv(65536)
        assert chunk, "closed before the whole body"
        body += chunk
    assert body.startswith(b"unsupported Sec-WebSocket-Version") and headers["Connection"] == "close"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers["Date"])
    foreign = [line for line in _standard(port) if not line.startswith("Origin")] + ["Origin: https://evil.example"]
    assert Exchange(port, _request("/head", *foreign)).status == 403
    assert Exchange(port, _request("/nowhere", *_standard(port))).status == 404


def test_close_still_works_after_a_lean_handshake(head_server):
    client = RawClient(head_server.port)
    assert b" 101 " in client.upgrade("/head")
    client.send_frame(OP_CLOSE, b"\x03\xe8")
    assert client.close_code() == 1000
