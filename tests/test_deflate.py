"""permessage-deflate (RFC 7692): negotiation, compression, inflation limits, and the real server.

The pure parts are driven directly; the rest runs against real server
processes (the echo server and the test Asok project) with a client on a bare
socket that compresses and inflates with the standard library.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import zlib

import gevent
import gevent.socket
import pytest

from asok_green.core.limits import Limits
from asok_green.protocol import deflate as deflate_module
from asok_green.protocol.deflate import Inflater, PerMessageDeflate, compress, negotiate, parse_extensions
from asok_green.protocol.frames import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_TEXT,
    ProtocolError,
)
from asok_green.protocol.handshake import choose_compression, response_headers
from asok_green.protocol.outgoing import Outgoing
from asok_green.server import hub as hub_module
from asok_green.server.connection import Connection
from asok_green.server.hub import WebSocketServer
from tests.conftest import asok_serve
from tests.echo import ROOT, echo_serve
from tests.server_frames import client_frame, split_server_frame

pytestmark = pytest.mark.quick

TAIL = b"\x00\x00\xff\xff"
BOTH_NO_TAKEOVER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
CHROME_OFFER = "permessage-deflate; client_max_window_bits"


def inflate(data: bytes, window_bits: int = 15) -> bytes:
    """Inflate one message body the way a client without context takeover does."""
    return zlib.decompressobj(-window_bits).decompress(data + TAIL)


def client_deflate(payload: bytes) -> bytes:
    """Compress one message as a client would (RFC 7692 section 7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return data[:-4]


# -- negotiation ---------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "x-webkit-deflate-frame", "permessage-foo"])
def test_no_offer_means_no_compression(header):
    assert negotiate(header) is None


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate",  # Firefox
        "permessage-deflate; client_max_window_bits",  # Chrome
        "permessage-deflate; client_no_context_takeover; client_max_window_bits",  # the Autobahn suite
        "PerMessage-Deflate; Client_Max_Window_Bits",
    ],
)
def test_offer_is_accepted_without_context_takeover_either_way(offer):
    agreed = negotiate(offer)
    assert agreed == PerMessageDeflate(server_max_window_bits=15, client_no_context_takeover=True)
    assert agreed.response_header() == BOTH_NO_TAKEOVER


def test_requested_server_window_is_used_and_answered():
    agreed = negotiate("permessage-deflate; server_max_window_bits=10; server_no_context_takeover")
    assert agreed.server_max_window_bits == 10
    assert agreed.response_header() == BOTH_NO_TAKEOVER + "; server_max_window_bits=10"


def test_quoted_window_value_is_accepted():
    assert negotiate('permessage-deflate; server_max_window_bits="12"').server_max_window_bits == 12


def test_server_window_of_8_is_declined_for_the_next_offer():
    agreed = negotiate("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9")
    assert agreed.server_max_window_bits == 9


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=yes",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=0x0f",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=abc",
    ],
)
def test_invalid_offer_is_declined(offer):
    assert negotiate(offer) is None


def test_other_extensions_before_the_offer_are_skipped():
    assert negotiate("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits") is not None


def test_client_context_takeover_is_left_to_the_client_when_allowed():
    assert not negotiate("permessage-deflate", client_context_takeover=True).client_no_context_takeover
    assert negotiate("permessage-deflate; client_no_context_takeover", client_context_takeover=True) == (
        PerMessageDeflate(client_no_context_takeover=True)
    )


def test_parse_extensions_keeps_order_params_and_values():
    parsed = parse_extensions('foo, permessage-deflate; a=1; B="2"; c , ,bar;')
    assert parsed == [
        ("foo", []),
        ("permessage-deflate", [("a", "1"), ("b", "2"), ("c", None)]),
        ("bar", []),
    ]


def test_handshake_answer_names_the_extension_only_when_agreed():
    environ = {
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_EXTENSIONS": CHROME_OFFER,
    }
    agreed = choose_compression(environ)
    assert ("Sec-WebSocket-Extensions", BOTH_NO_TAKEOVER) in response_headers(environ, agreed)
    assert choose_compression(environ, enabled=False) is None
    assert all(name != "Sec-WebSocket-Extensions" for name, _ in response_headers(environ))


def test_compression_setting_comes_from_keyword_config_or_environment():
    assert Limits.resolve({}, environ={}).compression
    assert not Limits.resolve({"compression": False}, environ={}).compression
    assert not Limits.resolve({}, {"WS_COMPRESSION": False}, environ={}).compression
    assert not Limits.resolve({}, environ={"WS_COMPRESSION": "0"}).compression


# -- compressing ---------------------------------------------------------------


def test_each_message_inflates_on_its_own():
    text = b"the same sentence, said again and again. " * 20
    compress(text)
    second = compress(text)
    # Had the compressor kept its history, this would refer back into the first message.
    assert inflate(second) == text
    assert len(second) < len(text) // 5


def test_requested_window_is_respected():
    block = os.urandom(600)
    payload = block + bytes(2000) + block  # the repeat is 2600 bytes back
    data = compress(payload, 9)
    assert inflate(data, 9) == payload  # a 512-byte window suffices to inflate it


def test_incompressible_payload_is_stored_not_searched():
    payload = os.urandom(200_000)
    data = compress(payload)
    assert inflate(data) == payload
    # Stored blocks: a few bytes of header per 64 KiB, nothing saved, nothing lost.
    assert len(payload) < len(data) < len(payload) + 64


def test_empty_payload_round_trips():
    assert inflate(compress(b"")) == b""


def test_outgoing_compresses_once_per_window_size(monkeypatch):
    calls = []
    real = deflate_module.compress
    monkeypatch.setattr(deflate_module, "compress", lambda p, bits: calls.append(bits) or real(p, bits))
    message = Outgoing.of("hello " * 30)
    assert message.frame_for(None) is message.frame
    first = message.frame_for(PerMessageDeflate())
    assert message.frame_for(PerMessageDeflate(client_no_context_takeover=False)) is first
    assert first[0] == 0x80 | 0x40 | OP_TEXT  # FIN, RSV1, text
    other = message.frame_for(PerMessageDeflate(server_max_window_bits=10, server_window_requested=True))
    assert other is not first
    assert calls == [15, 10]


def test_standard_library_zlib_is_the_fallback():
    script = """
import sys, zlib
sys.modules["zlib_ng"] = None  # as if the package were not installed
from asok_green.protocol import deflate
payload = b"fallback " * 100
data = deflate.compress(payload)
assert zlib.decompressobj(-15).decompress(data + b"\\x00\\x00\\xff\\xff") == payload
assert deflate.Inflater(1000).inflate(data) == payload
print(deflate.ENGINE)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "zlib"


# -- inflating -------------------------------------------------------------------


def test_inflater_round_trip_and_exact_limit():
    payload = b"x" * 1000
    assert Inflater(max_size=1000).inflate(client_deflate(payload)) == payload


def test_zip_bomb_is_refused_without_inflating_it():
    bomb = client_deflate(bytes(50 << 20))  # 50 MiB of zeros in about 50 KB
    assert len(bomb) < 100_000
    with pytest.raises(ProtocolError) as info:
        Inflater(max_size=1 << 20).inflate(bomb)
    assert info.value.code == CLOSE_TOO_BIG


def test_one_byte_over_the_limit_is_too_big():
    with pytest.raises(ProtocolError) as info:
        Inflater(max_size=999).inflate(client_deflate(b"x" * 1000))
    assert info.value.code == CLOSE_TOO_BIG


def test_corrupt_data_is_protocol_error():
    with pytest.raises(ProtocolError) as info:
        Inflater(max_size=1000).inflate(b"\xff\xff\xff\xff")
    assert info.value.code == CLOSE_PROTOCOL_ERROR


def test_context_takeover_needs_a_kept_decompressor():
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    text = b"context taken over from the previous message " * 4
    first = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    second = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    keeping = Inflater(max_size=1000, no_context_takeover=False)
    assert keeping.inflate(first[:-4]) == text
    assert keeping.inflate(second[:-4]) == text
    fresh = Inflater(max_size=1000)
    assert fresh.inflate(first[:-4]) == text
    with pytest.raises(ProtocolError):
        fresh.inflate(second[:-4])  # refers back into a message it no longer has


def test_idle_inflater_holds_no_zlib_state():
    inflater = Inflater(max_size=1000)
    inflater.inflate(client_deflate(b"hello"))
    assert inflater._decompressor is None


# -- the hub: one compressed frame for every compressed recipient ----------------


def read_frames(sock: socket.socket, timeout: float = 1.0) -> list[tuple[bool, int, bytes]]:
    """``(rsv1, opcode, payload)`` of every frame the server sent within ``timeout``."""
    data = b""
    with gevent.Timeout(timeout, False):
        while True:
            sock.settimeout(0.05)
            try:
                chunk = sock.recv(1 << 20)
            except (TimeoutError, OSError):
                if data:
                    break
                continue
            if not chunk:
                break
            data += chunk
    frames = []
    while data:
        (_, rsv1, opcode, payload), data = split_server_frame(data)
        frames.append((rsv1, opcode, payload))
    return frames


def test_broadcast_compresses_once_for_every_deflate_recipient(monkeypatch):
    ws = WebSocketServer()
    pairs = []
    try:
        for i in range(30):
            a, b = gevent.socket.socketpair()
            deflate = PerMessageDeflate() if i % 3 else None
            conn = Connection(ws, a, ("127.0.0.1", i), "/room", {}, deflate=deflate)
            ws.register(conn)
            pairs.append((a, b, deflate))
        calls = []
        real = deflate_module.compress
        monkeypatch.setattr(deflate_module, "compress", lambda p, bits: calls.append(p) or real(p, bits))
        text = "a message for the whole room, long enough to be worth compressing " * 3
        assert ws.broadcast("/room", text) == 30
        assert len(calls) == 1
        for _, peer, deflate in pairs:
            [(rsv1, opcode, payload)] = read_frames(peer)
            assert (rsv1, opcode) == (deflate is not None, OP_TEXT)
            assert (inflate(payload) if rsv1 else payload) == text.encode()
    finally:
        hub_module._INSTANCES.remove(ws)
        for a, b, _ in pairs:
            a.close()
            b.close()


# -- the real server ---------------------------------------------------------------


class DeflateClient:
    """A client on a bare socket that offers permessage-deflate."""

    def __init__(
        self, port: int, path: str = "/echo", offer: str | None = "permessage-deflate; client_max_window_bits"
    ):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            f"Origin: http://127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if offer:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during handshake: {head!r}"
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        status, *header_lines = head.decode("latin-1").split("\r\n")
        assert status.startswith("HTTP/1.1 101"), head
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}

    def send_compressed(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(client_frame(opcode, client_deflate(payload), rsv=0b100))

    def recv(self) -> tuple[bool, int, bytes]:
        """The next frame: ``(rsv1, opcode, payload)``."""
        while (split := split_server_frame(self.buffer)) is None:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "server closed the connection"
            self.buffer += chunk
        (_, rsv1, opcode, payload), self.buffer = split
        return rsv1, opcode, payload

    def recv_message(self) -> tuple[int, bytes]:
        rsv1, opcode, payload = self.recv()
        return opcode, inflate(payload) if rsv1 else payload

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    proc = echo_serve(tmp_path_factory.mktemp("echo"))
    yield proc
    proc.stop()


@pytest.mark.timeout(30)
def test_server_accepts_the_offer_and_echoes_compressed(echo):
    client = DeflateClient(echo.port, "/any/path")
    try:
        assert client.headers["sec-websocket-extensions"] == BOTH_NO_TAKEOVER
        text = "Grüße, " * 100
        client.send_compressed(OP_TEXT, text.encode())
        rsv1, opcode, payload = client.recv()
        assert (rsv1, opcode) == (True, OP_TEXT)
        assert inflate(payload).decode() == text
        blob = bytes(range(256)) * 40
        client.send_compressed(OP_BINARY, blob)
        assert client.recv_message() == (OP_BINARY, blob)
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_uncompressed_and_fragmented_messages_on_a_deflate_connection(echo):
    client = DeflateClient(echo.port)
    try:
        client.sock.sendall(client_frame(OP_TEXT, b"plain"))
        assert client.recv_message() == (OP_TEXT, b"plain")
        body = client_deflate(b"in three pieces " * 50)
        third = len(body) // 3
        frames = client_frame(OP_TEXT, body[:third], fin=False, rsv=0b100)
        frames += client_frame(OP_CONT, body[third : 2 * third], fin=False)
        frames += client_frame(OP_CONT, body[2 * third :])
        client.sock.sendall(frames)
        assert client.recv_message() == (OP_TEXT, b"in three pieces " * 50)
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_compression_refused_by_command_line_switch(tmp_path):
    proc = echo_serve(tmp_path, "--no-compression")
    try:
        client = DeflateClient(proc.port)
        assert "sec-websocket-extensions" not in client.headers
        client.send_compressed(OP_TEXT, b"not negotiated")
        rsv1, opcode, payload = client.recv()
        assert opcode == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == CLOSE_PROTOCOL_ERROR
        client.close()
    finally:
        proc.stop()


@pytest.mark.timeout(60)
def test_asok_project_inflates_within_its_message_limit(server):
    client = DeflateClient(server.port, "/echo")
    try:
        assert client.headers["sec-websocket-extensions"] == BOTH_NO_TAKEOVER
        client.send_compressed(OP_TEXT, b"a" * (1 << 20))  # exactly the 1 MiB limit
        assert client.recv_message() == (OP_TEXT, b"a" * (1 << 20))
        client.send_compressed(OP_TEXT, b"a" * ((1 << 20) + 1))  # a 1 KB frame that inflates past it
        rsv1, opcode, payload = client.recv()
        assert opcode == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == CLOSE_TOO_BIG
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_ws_compression_0_turns_compression_off(project, tmp_path):
    from tests.asok_project import project_env

    proc = asok_serve(project, tmp_path, env=project_env(WS_COMPRESSION="0"))
    try:
        client = DeflateClient(proc.port, "/echo")
        assert "sec-websocket-extensions" not in client.headers
        client.sock.sendall(client_frame(OP_TEXT, b"still works"))
        assert client.recv() == (False, OP_TEXT, b"still works")
        client.close()
    finally:
        proc.stop()
