"""Who may connect, and what hostile input gets: each row of the README's security table.

Every test runs against a real `asok serve --gevent` process; the hostile cases
use a bare socket (tests/raw_client.py) so they can break the protocol on purpose.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time

import pytest
import websocket

from tests.asok_project import fetch, login, make_project, project_env
from tests.conftest import BIN, asok_serve, ws_connect
from tests.raw_client import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawClient
from tests.server_frames import parse_server_frames

pytestmark = pytest.mark.timeout(90)

STRICT_WSGI = """
@ws.on("/revoke-me")
def revoke_me(conn, message):
    store = app._session_store
    data = store.load(conn.login_sid)
    data["_revoked"] = True
    store.save(conn.login_sid, data)
    conn.send("revoked")


@ws.room_authorizer
def authorize(conn, room):
    if room == "explodes":
        raise RuntimeError("authorizer bug")
    if room.startswith("admin:"):
        return bool(conn.user and conn.user.is_admin)
    return True
"""

STRICT_ENV = {
    "WS_ALLOWED_ORIGINS": "https://*.example.com,https://app.test",
    "WS_MAX_MESSAGE_SIZE": "1024",
    "WS_MAX_HEADER_BYTES": "4096",
    "WS_HANDSHAKE_TIMEOUT": "1",
    "WS_MAX_MESSAGES_PER_SECOND": "20",
    "WS_SESSION_CHECK_INTERVAL": "0.5",
}


@pytest.fixture(scope="module")
def strict_project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("strict"), extra_wsgi=STRICT_WSGI)


@pytest.fixture(scope="module")
def strict(strict_project, tmp_path_factory):
    """A server with small limits and an explicit Origin list."""
    proc = asok_serve(strict_project, tmp_path_factory.mktemp("strict-logs"), env=project_env(**STRICT_ENV))
    yield proc
    proc.stop()


def refused_status(server, path="/echo", **kw) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(server, path, **kw)
    return refused.value.status_code


# -- Origin policy ---------------------------------------------------------------


def test_cross_site_origin_gets_403_logged_with_origin_and_path(server):
    assert refused_status(server, "/echo", origin="https://evil.example") == 403
    log = server.wait_for_log("https://evil.example")
    assert "refused WebSocket /echo" in log and "403 Forbidden" in log


def test_page_own_origin_is_allowed_without_configuration(strict):
    client = ws_connect(strict, "/echo", origin=strict.url)
    client.send("own origin")
    assert client.recv() == "own origin"


@pytest.mark.parametrize("origin", ["https://app.test", "https://chat.example.com", "https://a.b.example.com"])
def test_listed_and_wildcard_origins_are_allowed(strict, origin):
    ws_connect(strict, "/echo", origin=origin).close()


@pytest.mark.parametrize(
    "origin",
    ["https://example.com.evil.io", "http://chat.example.com", "https://evilexample.com", "null", "https://app.test.x"],
)
def test_lookalike_origins_are_refused(strict, origin):
    assert refused_status(strict, "/echo", origin=origin) == 403


def test_missing_origin_is_refused_by_default(strict):
    raw = RawClient(strict.port)
    raw.sock.sendall(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert raw.sock.recv(100).startswith(b"HTTP/1.1 403")


def test_cors_origins_from_app_config_are_honoured(tmp_path):
    project = make_project(tmp_path / "cors", extra_wsgi='app.config["CORS_ORIGINS"] = ["https://cors.test"]')
    proc = asok_serve(project, tmp_path, env=project_env(WS_ALLOW_NO_ORIGIN="1"))
    try:
        ws_connect(proc, "/echo", origin="https://cors.test").close()
        assert refused_status(proc, "/echo", origin="https://other.test") == 403
        no_origin = websocket.create_connection(proc.ws_url + "/echo", suppress_origin=True, timeout=5)
        no_origin.close()
    finally:
        proc.stop()


def test_star_origin_with_debug_off_is_refused_at_start_up(project):
    # `asok serve` would let the project's .env (DEBUG=true) win; run the server directly.
    env = project_env(WS_ALLOWED_ORIGINS="*", DEBUG="false")
    done = subprocess.run(
        [str(BIN / "python"), "-m", "asok_green", "serve", "--port", "0"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refused when DEBUG is off" in done.stderr


# -- authentication and revocation ---------------------------------------------------


def next_close_frame(client, timeout: float = 5):
    """Skip text (presence broadcasts) until the server's close frame."""
    client.settimeout(timeout)
    while True:
        opcode, frame = client.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return frame


def test_logout_closes_that_users_sockets_at_once_and_presence_sees_it(server):
    watcher = ws_connect(server, "/asok/live")
    cookies = login(server.url, "alice")
    tab = ws_connect(server, "/echo", cookies=cookies)
    assert fetch(server.url + "/logout", cookies=cookies).status in (200, 302)
    # This server re-checks sessions every 30 s: a close within the 5 s wait comes from the logout itself.
    frame = next_close_frame(tab, timeout=5)
    assert struct.unpack("!H", frame.data[:2])[0] == 1008
    assert b"logged out or revoked" in frame.data
    seen = []
    watcher.settimeout(5)
    while ("offline" not in seen) and len(seen) < 20:
        message = json.loads(watcher.recv())
        if message.get("type") == "presence" and message.get("user_id") == 1:
            seen.append(message["status"])
    assert seen[-1] == "offline"


def test_revoked_session_is_closed_by_the_periodic_recheck(strict):
    cookies = login(strict.url, "bob")
    tab = ws_connect(strict, "/echo", cookies=cookies)
    admin = ws_connect(strict, "/revoke-me", cookies=cookies)
    admin.send("go")
    assert admin.recv() == "revoked"
    frame = next_close_frame(tab)
    assert struct.unpack("!H", frame.data[:2])[0] == 1008


def test_session_after_logout_makes_a_guest(server):
    cookies = login(server.url, "bob")
    fetch(server.url + "/logout", cookies=cookies)
    client = ws_connect(server, "/chat/guests", cookies=cookies)
    client.send("who am i")
    while (message := client.recv()).startswith("{"):
        pass
    assert message == "Guest: who am i"


# -- room authorization ----------------------------------------------------------------


def join(client, room) -> dict | None:
    """``join_room``; the error it got, or None once the join was handled without one."""
    client.send(json.dumps({"op": "join_room", "room": room}))
    client.send(json.dumps({"op": "get_presence"}))  # answered after the join
    while True:
        message = json.loads(client.recv())
        if message.get("type") == "error":
            return message
        if message.get("type") == "presence_list" and "room" not in message:
            return None


def test_room_authorizer_refusal_sends_the_doc_error(strict):
    bob = ws_connect(strict, "/asok/live", cookies=login(strict.url, "bob"))
    error = join(bob, "admin:secrets")
    assert error == {
        "op": "broadcast",
        "type": "error",
        "room": "admin:secrets",
        "message": "Unauthorized or invalid room join request for admin:secrets",
    }
    alice = ws_connect(strict, "/asok/live", cookies=login(strict.url, "alice"))
    assert join(alice, "admin:secrets") is None


def test_authorizer_that_raises_denies_and_logs(strict):
    client = ws_connect(strict, "/asok/live")
    assert join(client, "explodes")["room"] == "explodes"
    assert "room authorizer failed for room 'explodes'" in strict.wait_for_log("authorizer bug")


@pytest.mark.parametrize("room", ["x" * 201, "bad room", "semi;colon", "<script>"])
def test_invalid_room_names_are_refused(strict, room):
    client = ws_connect(strict, "/asok/live")
    assert join(client, room) is not None


# -- limits and protocol errors ------------------------------------------------------------


def test_message_over_the_size_limit_is_closed_1009(strict):
    raw = RawClient(strict.port)
    assert raw.upgrade("/echo").startswith(b"HTTP/1.1 101")
    raw.send_frame(OP_TEXT, b"x" * 2000)
    assert raw.close_code() == 1009


def test_announced_2gb_frame_is_refused_from_its_header(strict):
    raw = RawClient(strict.port)
    raw.upgrade("/echo")
    raw.sock.sendall(bytes([0x82, 0xFF]) + struct.pack("!Q", 2 << 30) + b"mask")
    assert raw.close_code() == 1009


def test_invalid_utf8_is_closed_1007(strict):
    raw = RawClient(strict.port)
    raw.upgrade("/echo")
    raw.send_frame(OP_TEXT, b"\xff\xfe not utf-8")
    assert raw.close_code() == 1007


def test_unmasked_client_frame_is_closed_1002(strict):
    raw = RawClient(strict.port)
    raw.upgrade("/echo")
    raw.send_frame(OP_TEXT, b"unmasked", mask=False)
    assert raw.close_code() == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_reserved_opcode_is_closed_1002(strict, opcode):
    raw = RawClient(strict.port)
    raw.upgrade("/echo")
    raw.send_frame(opcode, b"?")
    assert raw.close_code() == 1002


def test_message_rate_over_the_limit_is_closed_1008(strict):
    raw = RawClient(strict.port)
    raw.upgrade("/echo")
    for _ in range(100):
        try:
            raw.send_frame(OP_BINARY, b"spam")
        except (BrokenPipeError, ConnectionResetError):
            break  # the server already closed; what it sent before is still readable
    # This client never answers the close frame, so the server drops it after its
    # close_timeout (5 s): wait longer than that.
    frames = raw.frames_until_closed(timeout=10)
    assert 1 <= sum(op == OP_BINARY for op, _ in frames) < 100
    assert frames[-1][0] == OP_CLOSE and struct.unpack("!H", frames[-1][1][:2])[0] == 1008


def test_headers_over_the_limit_get_431(strict):
    raw = RawClient(strict.port)
    head = raw.upgrade("/echo", extra="X-Padding: " + "a" * 5000 + "\r\n")
    assert head.startswith(b"HTTP/1.1 431")


def test_request_line_over_8k_gets_414(strict):
    raw = RawClient(strict.port)
    raw.sock.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert raw.sock.recv(100).startswith(b"HTTP/1.1 414")


def test_client_trickling_its_headers_is_dropped(strict):
    raw = RawClient(strict.port)
    raw.sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    # The client would trickle for 6 s; the server (1 s handshake timeout) must drop it before that.
    dropped_while_trickling = False
    try:
        for _ in range(30):
            raw.sock.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.2)
    except OSError:
        dropped_while_trickling = True
    raw.sock.settimeout(5)
    try:
        answer = raw.sock.recv(100)
    except OSError:
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert dropped_while_trickling


def test_refused_and_hostile_connections_do_not_hurt_others(strict):
    healthy = ws_connect(strict, "/echo", origin=strict.url)
    for _ in range(20):
        raw = RawClient(strict.port)
        raw.upgrade("/echo")
        raw.send_frame(OP_TEXT, b"\xc3\x28")
        raw.close()
    healthy.send("still fine")
    assert healthy.recv() == "still fine"


def test_connections_over_the_process_limit_get_503(project, tmp_path):
    proc = asok_serve(project, tmp_path, env=project_env(WS_MAX_CONNECTIONS="3"))
    try:
        held = [ws_connect(proc, "/echo") for _ in range(3)]
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_connect(proc, "/echo")
        assert refused.value.status_code == 503
        held[0].close()
        deadline = time.monotonic() + 5
        while True:
            try:
                ws_connect(proc, "/echo").close()
                break
            except websocket.WebSocketBadStatusException:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        proc.stop()


# -- keep-alive --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keepalive(project, tmp_path_factory):
    env = project_env(WS_PING_INTERVAL="0.3", WS_PING_TIMEOUT="0.5")
    proc = asok_serve(project, tmp_path_factory.mktemp("keepalive"), env=env)
    yield proc
    proc.stop()


def test_silent_client_is_pinged_then_closed_1011(keepalive):
    raw = RawClient(keepalive.port)
    raw.upgrade("/echo")
    frames = raw.frames_until_closed(timeout=5)
    assert frames[0][0] == OP_PING
    assert frames[-1][0] == OP_CLOSE and struct.unpack("!H", frames[-1][1][:2])[0] == 1011


def test_client_answering_pings_stays_open(keepalive):
    raw = RawClient(keepalive.port)
    raw.upgrade("/echo")

    def answer_pings_until(deadline: float, want_text: bool = False) -> list[bytes]:
        texts = []
        while time.monotonic() < deadline and not (want_text and texts):
            raw.sock.settimeout(0.1)
            try:
                chunk = raw.sock.recv(1024)
            except TimeoutError:
                continue
            assert chunk, "server closed a client that answers its pings"
            frames, raw.buffer = parse_server_frames(raw.buffer + chunk)
            for opcode, payload in frames:
                assert opcode != OP_CLOSE, "server closed a client that answers its pings"
                if opcode == OP_PING:
                    raw.send_frame(OP_PONG, payload)
                elif opcode == OP_TEXT:
                    texts.append(payload)
        return texts

    assert answer_pings_until(time.monotonic() + 2.5) == []
    raw.send_frame(OP_TEXT, b"alive")
    assert answer_pings_until(time.monotonic() + 2, want_text=True) == [b"alive"]


def test_vanished_user_goes_offline(keepalive):
    watcher = websocket.WebSocket()
    watcher.connect(keepalive.ws_url + "/asok/live", origin=keepalive.url, timeout=5)
    cookies = login(keepalive.url, "bob")
    raw = RawClient(keepalive.port)
    raw.upgrade("/echo", extra=f"Cookie: asok_session={cookies['asok_session']}\r\n")
    statuses = []
    deadline = time.monotonic() + 5
    while "offline" not in statuses and time.monotonic() < deadline:
        opcode, data = watcher.recv_data()  # websocket-client answers the server's pings itself
        if opcode == OP_TEXT:
            message = json.loads(data)
            if message.get("type") == "presence" and message["user_id"] == 2:
                statuses.append(message["status"])
    assert statuses == ["online", "offline"]
