"""One strict request head for every request (RFC 9112): ambiguous framing and malformed heads get 400 and a close.

The parser's rules are checked on their own (quick), then each attack over a
real socket against ``tests/hostile_app.py``: exactly one response, a 400, the
connection closed, and nothing hidden in a body ever served.
"""

from __future__ import annotations

import re
import socket

import pytest

from asok_green.protocol.http_head import BadHead, asks_websocket, body_framing, read_fields
from tests.test_hostile_clients import hostile_serve

pytestmark = pytest.mark.timeout(60)

UPGRADE = (
    "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

#: name -> raw request: each must get one 400 and a closed connection.
ATTACKS = {
    "cl_then_te": "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    "0\r\n\r\n" + SMUGGLED,
    "te_then_cl": "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
    "0\r\n\r\n" + SMUGGLED,
    "two_lengths": "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "chunked_identity": "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
    "0\r\n\r\n" + SMUGGLED,
    "te_twice": "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
    "0\r\n\r\n" + SMUGGLED,
    "xchunked": "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "space_before_colon": "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "signed_length": "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n" + SMUGGLED,
    "missing_host": "GET /page HTTP/1.1\r\n\r\n",
    "two_hosts": "GET /page HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "obs_fold": "GET /page HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n b\r\n\r\n",
    "control_character": "GET /page HTTP/1.1\r\nHost: x\r\nX-Note: a\x00b\r\n\r\n",
    "lone_cr": "GET /page HTTP/1.1\r\nHost: x\r\nX-Note: a\rb\r\n\r\n",
    "upgrade_with_length": UPGRADE + "Content-Length: 5\r\n\r\nhello",
    "upgrade_with_chunked_body": UPGRADE + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    """The hostile-clients app, its access log on."""
    proc = hostile_serve(tmp_path_factory.mktemp("strict"))
    yield proc
    proc.stop()


def exchange(port: int, raw: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``raw``; everything the server answers, and whether it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            pass
        return received, True


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_ambiguous_or_malformed_head_gets_one_400_and_a_close(strict_server, attack):
    received, closed = exchange(strict_server.port, ATTACKS[attack].encode("latin-1"))
    assert received.startswith(b"HTTP/1.1 400 "), received
    assert len(re.findall(rb"(?:^|\n)HTTP/1\.[01] \d{3} ", received)) == 1, received
    assert b"101 Switching" not in received
    assert closed, f"connection left open after {received!r}"


def test_smuggled_request_is_never_served_and_nothing_is_a_traceback(strict_server):
    for attack in ("cl_then_te", "chunked_identity", "te_twice", "xchunked", "space_before_colon"):
        exchange(strict_server.port, ATTACKS[attack].encode("latin-1"))
    log = strict_server.wait_for_log("refused request")
    assert "/smuggled" not in log
    assert "Traceback" not in log


def test_well_formed_requests_are_still_served(strict_server):
    chunked = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    plain = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    for raw in (chunked, b"GET /p HTTP/1.0\r\n\r\n", plain):
        received, _ = exchange(strict_server.port, raw, timeout=2)
        assert received.startswith(b"HTTP/1.1 200 "), received


# -- the parser on its own ---------------------------------------------------------------


def lines_of(*lines: str) -> list[bytes]:
    return [(line + "\r\n").encode("latin-1") for line in lines]


@pytest.mark.quick
def test_fields_are_read_names_in_lower_case_values_stripped():
    assert read_fields(lines_of("Host: a", "X-Y:\t b c \t", "Empty:")) == [("host", "a"), ("x-y", "b c"), ("empty", "")]
    assert read_fields([b"Host: a\n", b"X: \xe9\n"]) == [("host", "a"), ("x", "\xe9")]


@pytest.mark.quick
@pytest.mark.parametrize(
    "lines",
    [
        [b"Host : a\r\n"],
        [b"Host\t: a\r\n"],
        [b"Host: a\r\n", b" folded\r\n"],
        [b"Host: a\r\n", b"\tfolded\r\n"],
        [b"Host: a\x00\r\n"],
        [b"Host: a\rb\r\n"],
        [b"Host: a\x7f\r\n"],
        [b"Ho(st: a\r\n"],
        [b"no colon\r\n"],
        [b": no name\r\n"],
        [b"Host: a\r\n", b"X: cut"],
    ],
)
def test_malformed_lines_are_refused(lines):
    with pytest.raises(BadHead):
        read_fields(lines)


@pytest.mark.quick
@pytest.mark.parametrize(
    "version, fields, upgrade",
    [
        ("HTTP/1.1", [("Content-Length", "4"), ("Transfer-Encoding", "chunked")], False),
        ("HTTP/1.1", [("Transfer-Encoding", "chunked"), ("Content-Length", "4")], False),
        ("HTTP/1.1", [("Content-Length", "4"), ("Content-Length", "4")], False),
        ("HTTP/1.1", [("Content-Length", "4"), ("Content-Length", "5")], False),
        ("HTTP/1.1", [("Content-Length", "-1")], False),
        ("HTTP/1.1", [("Content-Length", "+1")], False),
        ("HTTP/1.1", [("Content-Length", "1 2")], False),
        ("HTTP/1.1", [("Content-Length", "\u0661")], False),
        ("HTTP/1.1", [("Content-Length", "9" * 40)], False),
        ("HTTP/1.1", [("Transfer-Encoding", "chunked, identity")], False),
        ("HTTP/1.1", [("Transfer-Encoding", "identity")], False),
        ("HTTP/1.1", [("Transfer-Encoding", "xchunked")], False),
        ("HTTP/1.1", [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], False),
        ("HTTP/1.0", [("Transfer-Encoding", "chunked")], False),
        ("HTTP/1.1", [("Content-Length", "1")], True),
        ("HTTP/1.1", [("Transfer-Encoding", "chunked")], True),
    ],
)
def test_ambiguous_framing_is_refused(version, fields, upgrade):
    with pytest.raises(BadHead):
        pairs = [("host", "a"), *fields, *([("upgrade", "websocket")] if upgrade else [])]
        body_framing(version, [(name.lower(), value) for name, value in pairs])


@pytest.mark.quick
def test_host_is_required_once_on_http_11():
    with pytest.raises(BadHead):
        body_framing("HTTP/1.1", [])
    with pytest.raises(BadHead):
        body_framing("HTTP/1.0", [("host", "a"), ("host", "b")])
    assert not body_framing("HTTP/1.0", []).has_body


@pytest.mark.quick
def test_framing_of_well_formed_heads():
    chunked = body_framing("HTTP/1.1", [("host", "a"), ("transfer-encoding", "Chunked")])
    assert chunked.chunked and chunked.content_length is None and chunked.has_body
    sized = body_framing("HTTP/1.1", [("host", "a"), ("content-length", "012")])
    assert sized.content_length == 12 and not sized.chunked
    upgrade = body_framing("HTTP/1.1", [("host", "a"), ("upgrade", "WebSocket"), ("content-length", "0")])
    assert not upgrade.has_body and upgrade.websocket and not sized.websocket
    assert asks_websocket([("Upgrade", "h2c, WebSocket")]) and not asks_websocket([("Upgrade", "h2c")])
