"""The Asok WebSocket API served by `asok serve --gevent`, end to end on one port.

Each test talks to a real server process (a generated Asok project with a real
SQLite user table) over loopback, with a real WebSocket client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess

import pytest
import websocket

from tests.asok_project import asok_create, fetch, login
from tests.conftest import BIN, asok_serve, until_marker, ws_connect

pytestmark = pytest.mark.timeout(60)


def introspect(client, **query) -> dict:
    client.send(json.dumps(query))
    return json.loads(recv_text(client))


PRESENCE = '{"op": "broadcast", "type": "presence"'


def recv_text(client) -> str:
    """The next text message that is not a presence broadcast."""
    while True:
        message = client.recv()
        if not (isinstance(message, str) and message.startswith(PRESENCE)):
            return message


def test_same_port_serves_a_page_and_a_websocket(server):
    page = fetch(server.url + "/")
    assert page.status == 200 and "asokWS" in page.text
    client = ws_connect(server, "/echo")
    client.send("over the same port")
    assert client.recv() == "over the same port"


def test_page_points_asokws_at_the_serving_port(server):
    page = fetch(server.url + "/")
    assert f"window.ASOK_WS_PORT = {server.port};" in page.text
    csp = page.headers["Content-Security-Policy"]
    assert f"ws://127.0.0.1:{server.port}" in csp


def test_doc_chat_example_two_guests_see_each_other(server):
    alice, bob = ws_connect(server, "/chat/general"), ws_connect(server, "/chat/general")
    other_room = ws_connect(server, "/chat/random")
    alice.send("hi")
    assert recv_text(alice) == "Guest: hi"
    assert recv_text(bob) == "Guest: hi"
    # The marker: the other room's own message, broadcast after "hi" was.
    other_room.send("marker")
    assert until_marker(other_room, "Guest: marker".__eq__) == []


def test_logged_in_user_is_conn_user(server):
    cookies = login(server.url, "alice")
    client = ws_connect(server, "/chat/general", cookies=cookies)
    client.send("hello")
    assert recv_text(client) == "alice: hello"


def test_forged_session_cookie_is_a_guest(server):
    cookies = login(server.url, "bob")
    forged = dict(cookies, asok_session=cookies["asok_session"][:-4] + "0000")
    client = ws_connect(server, "/introspect", cookies=forged)
    assert introspect(client)["user"] is None


def test_params_path_headers_addr(server):
    client = ws_connect(server, "/introspect")
    info = introspect(client)
    assert info["path"] == "/introspect"
    assert info["origin"] == server.url
    assert info["addr"][0] == "127.0.0.1" and isinstance(info["addr"][1], int)


def test_static_route_wins_over_dynamic_one(server):
    client = ws_connect(server, "/chat/lobby")
    client.send("x")
    assert recv_text(client) == "lobby: x"


def test_on_connect_greets(server):
    client = ws_connect(server, "/notifications")
    assert recv_text(client) == "Connected to notification stream"


def test_on_disconnect_runs_when_a_client_leaves(server):
    stays = ws_connect(server, "/chat/farewell")
    leaves = ws_connect(server, "/chat/farewell")
    leaves.close()
    assert recv_text(stays) == "Someone left the chat"


def test_broadcast_exclude_skips_the_sender(server):
    sender, other = ws_connect(server, "/exclude"), ws_connect(server, "/exclude")
    sender.send("not for me")
    assert recv_text(other) == "not for me"
    # The marker: a message from the other client, which the sender does get.
    other.send("marker")
    assert [m for m in until_marker(sender, "marker".__eq__) if not m.startswith(PRESENCE)] == []


def test_broadcast_json(server):
    client = ws_connect(server, "/json")
    client.send("x")
    assert json.loads(recv_text(client)) == {"echo": "x"}


def test_binary_frame_reaches_the_handler_as_bytes(server):
    client = ws_connect(server, "/echo")
    client.send_binary(b"\x00\xffbinary")
    opcode, data = client.recv_data()
    assert opcode == websocket.ABNF.OPCODE_BINARY
    assert data == b"\x00\xffbinary"


def test_handler_error_is_logged_and_the_connection_stays_open(server):
    client = ws_connect(server, "/boom")
    client.send("explode")
    client.ping(b"still there?")
    opcode, frame = client.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == b"still there?"
    log = server.wait_for_log("RuntimeError: boom")
    assert "error in message handler for /boom" in log


def test_a_client_raising_the_same_handler_error_again_and_again_gets_few_tracebacks(server):
    before = server.log().count("RuntimeError: boom")
    client = ws_connect(server, "/boom")
    for _ in range(100):
        client.send("explode")
    client.ping(b"all handled?")  # answered once the 100 messages before it are
    opcode, frame = client.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == b"all handled?"
    client.close()
    logged = server.log().count("RuntimeError: boom") - before
    assert 1 <= logged <= 10  # the log's burst (WS_LOG_BURST): the rest are counted, not printed


def test_upgrade_to_unknown_path_gets_404_before_handshake(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(server, "/no/such/socket")
    assert refused.value.status_code == 404
    assert "no WebSocket route matches /no/such/socket" in server.wait_for_log("/no/such/socket")


def test_broadcast_from_an_http_view_reaches_websocket_clients(server):
    client = ws_connect(server, "/notifications")
    assert recv_text(client) == "Connected to notification stream"
    assert fetch(server.url + "/notify?msg=deploy%20done").status == 200
    assert recv_text(client) == "deploy done"


def test_presence_and_connections_api(server):
    cookies = login(server.url, "bob")
    probe = ws_connect(server, "/introspect")
    bob_id = 2
    before = introspect(probe, users=[bob_id])
    assert before["is_online"] == {str(bob_id): False}
    tab = ws_connect(server, "/echo", cookies=cookies)
    after = introspect(probe, users=[bob_id], paths=["/echo", "/introspect"])
    assert bob_id in after["online"] and after["is_online"] == {str(bob_id): True}
    assert after["on_path"]["/introspect"] >= 1 and after["on_path"]["/echo"] >= 1
    tab.close()


def test_from_asok_import_websocketserver_is_the_green_one(server):
    client = ws_connect(server, "/introspect")
    assert introspect(client)["class"] == "asok_green.api.websocket_server.WebSocketServer"


def test_ignored_ws_port_is_said_once_in_the_log(server):
    log = server.wait_for_log("WebSocketServer(port=8001) ignored")
    assert log.count("WebSocketServer(port=8001) ignored") == 1
    assert re.search(rf"serving http://127\.0\.0\.1:{server.port} \(HTTP and WebSocket on the same port\)", log)


def test_sigterm_closes_websockets_with_1001_and_exits_0(project, tmp_path):
    proc = asok_serve(project, tmp_path)
    clients = [ws_connect(proc, "/echo") for _ in range(3)]
    proc.proc.send_signal(signal.SIGTERM)
    for client in clients:
        opcode, frame = client.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1001
        client.send_close()
    assert proc.proc.wait(5) == 0


def test_sigint_exits_0_within_5_seconds_even_with_silent_clients(project, tmp_path):
    proc = asok_serve(project, tmp_path)
    silent = [ws_connect(proc, "/echo") for _ in range(2)]
    idle_http = socket.create_connection(("127.0.0.1", proc.port))
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(5) == 0
    del silent, idle_http


def test_asok_serve_without_gevent_says_what_it_supports(project):
    done = subprocess.run([str(BIN / "asok"), "serve"], cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--gevent" in done.stderr


def test_authenticated_connections_hold_no_database_files(server):
    cookies = login(server.url, "alice")
    clients = [ws_connect(server, "/chat/fds", cookies=cookies) for _ in range(20)]
    for client in clients[:5]:
        client.send("hi")
    clients[0].recv()
    fds = [os.readlink(f"/proc/{server.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{server.proc.pid}/fd")]
    assert sum("db.sqlite3" in target for target in fds) <= 3
    for client in clients:
        client.close()


DOC_HANDLER = """
from asok import WebSocketServer

ws = WebSocketServer(port=8001)


@ws.on("/chat/[room]")
def on_message(conn, message):
    room = conn.params['room']
    name = conn.user.name if conn.user else "Guest"
    ws.broadcast(f"/chat/{room}", f"{name}: {message}")


ws.start()
"""


def test_asok_create_project_with_the_doc_handler_pasted(tmp_path):
    project = asok_create(tmp_path, "demo", wsgi_tail=DOC_HANDLER)
    proc = asok_serve(project, tmp_path)
    try:
        assert fetch(proc.url + "/").status == 200
        first, second = ws_connect(proc, "/chat/general"), ws_connect(proc, "/chat/general")
        first.send("hi")
        assert first.recv() == "Guest: hi"
        assert second.recv() == "Guest: hi"
    finally:
        assert proc.stop() == 0
