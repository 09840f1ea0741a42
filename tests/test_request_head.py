"""The upgrade head parser (asok_green.protocol.request_head) against pywsgi's reading of the same bytes."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from gevent.pywsgi import WSGIHandler

from asok_green.protocol.handshake import request_headers
from asok_green.protocol.request_head import parse_upgrade_head
from asok_green.server.handler import parse_header_block

pytestmark = pytest.mark.quick

BLOCKS = [
    ["Host: a", "Upgrade: websocket", "Connection: Upgrade"],
    ["Host: a", "upgrade: WebSocket", "X-Dup: 1", "x-dup: 2", "X-DUP: 3"],
    ["Host: a", "Upgrade: websocket", "Cookie: a=1", "Cookie: b=2", "cookie: c=3"],
    ["Host: a", "Upgrade: websocket", "X_Bad: no", "X-Good:   spaced   "],
    ["Host: a", "Upgrade: websocket", "Content-Type: text/plain", "Content-Type: other", "Content-Length: 0"],
    ["Host: a", "Upgrade: websocket", "X-Empty:", "X-Latin: \xe9t\xe9"],
    ["Host: a", "Upgrade: websocket", "Connection: keep-alive, Upgrade", "Sec-WebSocket-Protocol: a, b"],
]


def pywsgi_environ(raw: list[bytes]) -> dict:
    """The environ gevent's pywsgi builds for a GET with these header lines (its email parser included)."""
    handler = WSGIHandler.__new__(WSGIHandler)
    handler.server = SimpleNamespace(get_environ=dict)
    handler.headers = parse_header_block(raw)
    handler.command, handler.path, handler.request_version = "GET", "/p", "HTTP/1.1"
    handler.client_address, handler.socket, handler.rfile = ("127.0.0.1", 1), None, io.BytesIO()
    handler.content_length = None
    return handler.get_environ()


@pytest.mark.parametrize("lines", BLOCKS)
def test_headers_are_those_pywsgi_reads(lines):
    raw = [(line + "\r\n").encode("latin-1") for line in lines]
    head = parse_upgrade_head("GET /p HTTP/1.1", raw, ("127.0.0.1", 1))
    assert head is not None
    environ = pywsgi_environ(raw)
    assert head.fields == request_headers(environ)
    for key, value in environ.items():
        if key.startswith(("HTTP_", "CONTENT_", "REMOTE_", "PATH_", "QUERY_", "REQUEST_", "SERVER_PROTOCOL")):
            assert head.variables[key] == value, key


@pytest.mark.parametrize(
    "requestline, lines",
    [
        ("GET /p HTTP/1.0", ["Upgrade: websocket"]),
        ("GET /p", ["Upgrade: websocket"]),
        ("GET /p HTTP/1.1", ["Upgrade: h2c"]),
        ("GET /p HTTP/1.1", ["Upgrade: websocket", "no colon"]),
        ("GET /p HTTP/1.1", ["Upgrade : websocket"]),
        ("GET /p HTTP/1.1", [" Upgrade: websocket"]),
        ("GET /p HTTP/1.1", ["Upgrade: websocket", "X-A: a\rX-B: b"]),
        ("GET /p HTTP/1.1", ["Upgrade: websocket", "Transfer-Encoding: chunked"]),
        ("GET /p HTTP/1.1", ["Upgrade: websocket", "Content-Length: -1"]),
    ],
)
def test_anything_but_a_well_formed_upgrade_is_left_to_pywsgi(requestline, lines):
    raw = [(line + "\r\n").encode("latin-1") for line in lines]
    assert parse_upgrade_head(requestline, raw) is None


def test_bare_newlines_are_line_ends_and_folded_lines_are_refused():
    raw = [b"Upgrade: websocket\n", b"X-Note: a\r\n", b"Connection: Upgrade\r\n"]
    head = parse_upgrade_head("GET /p HTTP/1.1", raw)
    assert head.fields == {"upgrade": "websocket", "x-note": "a", "connection": "Upgrade"}
    assert parse_upgrade_head("GET /p HTTP/1.1", [*raw, b"  b\r\n"]) is None


def test_head_answers_what_pywsgi_reads_of_its_headers():
    raw = [b"Upgrade: websocket\r\n", b"Content-Type: x/y\r\n", b"Content-Length: 3\r\n"]
    head = parse_upgrade_head("GET /a%20b?q=1 HTTP/1.1", raw, ("10.0.0.1", 5), "https")
    assert head.get("CONTENT-LENGTH") == "3" and head.getheader("upgrade") == "websocket"
    assert head.typeheader == "x/y" and head.status == "" and head.content_length == 3
    assert list(head.headers) == ["upgrade: websocket\r\n", "content-type: x/y\r\n", "content-length: 3\r\n"]
    assert head.variables["PATH_INFO"] == "/a b" and head.variables["QUERY_STRING"] == "q=1"
    assert head.variables["REMOTE_ADDR"] == "10.0.0.1" and head.variables["wsgi.url_scheme"] == "https"


def test_a_last_line_cut_short_is_refused():
    assert parse_upgrade_head("GET /p HTTP/1.1", [b"Host: a\r\n", b"Upgrade: websocket"]) is None
