"""``WebSocketServer(adapter=MyAdapter())`` with an Asok adapter of one's own, under ``asok serve --gevent``.

The test project's adapter plays the other nodes with files: every ``publish``
is appended to a record file, and a message the test drops in the inbox
directory is delivered with ``server.broadcast(..., from_adapter=True)``, from
a native thread (as a client library with an I/O thread of its own would) or
from a greenlet. The server must call ``publish`` for every broadcast, deliver
what the adapter hands back to its own clients without publishing it again,
and close the adapter when it stops. An ``adapter=`` that is no adapter is
refused at start-up.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import uuid
from types import SimpleNamespace

import pytest
from asok.ws.adapter import BaseWebSocketAdapter, InMemoryWebSocketAdapter

from asok_green.cluster.redis_node import WORKERS_ENV, ClusterConfigError, resolve_settings
from tests.asok_project import WSGI, fetch, make_project, project_env
from tests.conftest import BIN, INTROSPECTION, asok_serve, free_port, ws_connect

pytestmark = pytest.mark.timeout(60)

DEADLINE = 15

#: The adapter, defined in the project's wsgi.py before the WebSocketServer that uses it.
ADAPTER = '''
import json as _json
import os as _os
import pathlib as _pathlib
import threading as _threading

from asok.ws.adapter import BaseWebSocketAdapter
from gevent.monkey import get_original as _original


class FileAdapter(BaseWebSocketAdapter):
    """The other nodes, played by files: publishes go to RECORD, INBOX/<thread>/*.json come back."""

    def __init__(self, record, inbox):
        super().__init__()
        self.record = _pathlib.Path(record)
        self.inbox = _pathlib.Path(inbox)

    def bind(self, server):
        super().bind(server)
        # One poller in a native thread, one in a greenlet (threading is patched).
        _original("_thread", "start_new_thread")(self._poll, ("native", _original("time", "sleep")))
        _threading.Thread(target=self._poll, args=("loop", __import__("time").sleep), daemon=True).start()

    def _poll(self, kind, sleep):
        folder = self.inbox / kind
        while True:
            for item in sorted(folder.glob("*.json")):
                data = _json.loads(item.read_text())
                item.unlink()
                msg = bytes.fromhex(data["hex"]) if "hex" in data else data["msg"]
                if data["target"] == "room":
                    self.server.broadcast_to(data["name"], msg, from_adapter=True)
                else:
                    self.server.broadcast(data["name"], msg, from_adapter=True)
            sleep(0.05)

    def _write(self, entry):
        with self.record.open("a") as record:
            record.write(_json.dumps(entry) + "\\n")

    def publish(self, channel, message):
        if isinstance(message, bytes):
            self._write({"channel": channel, "hex": message.hex()})
        else:
            self._write({"channel": channel, "msg": message})

    def close(self):
        self._write({"closed": True})


'''

CONSTRUCTOR = "ws = WebSocketServer(port=8001, app=app)"

EXTRA_ROUTES = """
@ws.on("/bytes")
def bytes_broadcast(conn, message):
    ws.broadcast("/bytes", message)
"""


def project_with(root: pathlib.Path, adapter_expr: str, prelude: str = ADAPTER) -> pathlib.Path:
    """A test project whose WebSocketServer is made with ``adapter=<adapter_expr>``."""
    make_project(root, extra_wsgi=INTROSPECTION + EXTRA_ROUTES)
    wsgi = (root / "wsgi.py").read_text()
    assert CONSTRUCTOR in WSGI and CONSTRUCTOR in wsgi
    made = f"{prelude}ws = WebSocketServer(port=8001, app=app, adapter={adapter_expr})"
    (root / "wsgi.py").write_text(wsgi.replace(CONSTRUCTOR, made))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("adapter-files")
    for kind in ("native", "loop"):
        (base / "inbox" / kind).mkdir(parents=True)
    return SimpleNamespace(record=base / "record.jsonl", inbox=base / "inbox")


@pytest.fixture(scope="module")
def server(tmp_path_factory, files):
    root = project_with(
        tmp_path_factory.mktemp("project"),
        "FileAdapter(_os.environ['ADAPTER_RECORD'], _os.environ['ADAPTER_INBOX'])",
    )
    env = project_env(ADAPTER_RECORD=str(files.record), ADAPTER_INBOX=str(files.inbox))
    proc = asok_serve(root, tmp_path_factory.mktemp("logs"), env=env)
    yield proc
    proc.stop()


def recorded(files) -> list[dict]:
    if not files.record.exists():
        return []
    return [json.loads(line) for line in files.record.read_text().splitlines() if line.strip()]


def wait_recorded(files, entry: dict) -> list[dict]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        entries = recorded(files)
        if entry in entries:
            return entries
        time.sleep(0.05)
    raise AssertionError(f"{entry} never published; published: {recorded(files)}")


def inject(files, thread: str, **message) -> None:
    """Hand the adapter a message from 'another node' (written whole, then renamed into place)."""
    name = uuid.uuid4().hex
    partial = files.inbox / f"{name}.part"
    partial.write_text(json.dumps(message))
    partial.rename(files.inbox / thread / f"{name}.json")


def unique(text: str) -> str:
    return f"{text}-{uuid.uuid4().hex[:8]}"


def test_a_page_broadcast_is_delivered_and_published(server, files):
    client = ws_connect(server, "/notifications")
    try:
        assert client.recv() == "Connected to notification stream"
        msg = unique("from-a-page")
        assert fetch(f"{server.url}/notify?msg={msg}").status == 200
        assert client.recv() == msg
    finally:
        client.close()
    wait_recorded(files, {"channel": "path:/notifications", "msg": msg})


def test_json_binary_and_room_broadcasts_are_published_as_asok_does(server, files):
    member = ws_connect(server, "/asok/live")
    talker = ws_connect(server, "/asok/live")
    sender = ws_connect(server, "/bytes")
    try:
        for conn in (member, talker):
            conn.send(json.dumps({"op": "join_room", "room": "lobby"}))
        text = unique("json")
        json_client = ws_connect(server, "/json")
        json_client.send(text)
        assert json.loads(json_client.recv()) == {"echo": text}
        json_client.close()
        payload = os.urandom(8)
        sender.send_binary(payload)
        assert sender.recv() == payload
        talker.send(json.dumps({"op": "typing", "room": "lobby", "typing": True}))
        typing = json.loads(member.recv())
        assert typing["type"] == "typing"
    finally:
        for conn in (member, talker, sender):
            conn.close()
    wait_recorded(files, {"channel": "path:/json", "msg": json.dumps({"echo": text})})
    wait_recorded(files, {"channel": "path:/bytes", "hex": payload.hex()})
    wait_recorded(files, {"channel": "room:lobby", "msg": json.dumps(typing)})


@pytest.mark.parametrize("thread", ["native", "loop"])
def test_what_the_adapter_delivers_reaches_local_sockets_and_is_not_published_again(server, files, thread):
    notified = ws_connect(server, "/notifications")
    member = ws_connect(server, "/asok/live")
    binary = ws_connect(server, "/bytes")
    try:
        assert notified.recv() == "Connected to notification stream"
        member.send(json.dumps({"op": "join_room", "room": "elsewhere"}))
        to_path, to_room, raw = unique("path"), unique("room"), os.urandom(6)
        # join_room answers nothing: a round trip on the same socket says it was handled.
        member.send(json.dumps({"op": "get_presence", "room": "elsewhere"}))
        assert json.loads(member.recv())["type"] == "presence_list"
        inject(files, thread, target="path", name="/notifications", msg=to_path)
        inject(files, thread, target="room", name="elsewhere", msg=to_room)
        inject(files, thread, target="path", name="/bytes", hex=raw.hex())
        assert notified.recv() == to_path
        assert member.recv() == to_room
        assert binary.recv() == raw
        # A broadcast made after them is published: by then the delivered ones would have been too.
        marker = unique("marker")
        fetch(f"{server.url}/notify?msg={marker}")
        assert notified.recv() == marker
    finally:
        for conn in (notified, member, binary):
            conn.close()
    entries = wait_recorded(files, {"channel": "path:/notifications", "msg": marker})
    published = {entry.get("msg") or entry.get("hex") for entry in entries}
    assert not published & {to_path, to_room, raw.hex()}


def test_the_adapter_is_closed_when_the_server_stops(tmp_path):
    record = tmp_path / "record.jsonl"
    inbox = tmp_path / "inbox"
    for kind in ("native", "loop"):
        (inbox / kind).mkdir(parents=True)
    root = project_with(tmp_path / "project", f"FileAdapter({str(record)!r}, {str(inbox)!r})")
    proc = asok_serve(root, tmp_path)
    try:
        msg = unique("last")
        fetch(f"{proc.url}/notify?msg={msg}")
    finally:
        assert proc.stop() == 0
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines[-2:] == [{"channel": "path:/notifications", "msg": msg}, {"closed": True}]


NOT_AN_ADAPTER = '''
class NotAnAdapter:
    """Has no publish()."""


'''

HALF_AN_ADAPTER = '''
from asok.ws.adapter import BaseWebSocketAdapter


class HalfAnAdapter(BaseWebSocketAdapter):
    """Keeps BaseWebSocketAdapter.publish, which raises NotImplementedError."""


'''


@pytest.mark.parametrize(
    ("prelude", "expr", "name"),
    [(NOT_AN_ADAPTER, "NotAnAdapter()", "NotAnAdapter"), (HALF_AN_ADAPTER, "HalfAnAdapter()", "HalfAnAdapter")],
)
def test_an_adapter_that_cannot_publish_is_refused_at_start_up(tmp_path, prelude, expr, name):
    root = project_with(tmp_path / "project", expr, prelude=prelude)
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(free_port())]
    done = subprocess.run(argv, cwd=root, env=project_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert name in done.stderr
    assert "not a WebSocket adapter" in done.stderr


# -- the decision, as a pure function ------------------------------------------------


class RecordingAdapter(BaseWebSocketAdapter):
    def publish(self, channel, message):
        pass


def hub(adapter):
    return SimpleNamespace(adapter=adapter, app=SimpleNamespace(config={}))


def test_a_custom_adapter_needs_no_redis_settings_even_under_workers(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "2")
    monkeypatch.delenv("WS_REDIS_URL", raising=False)
    assert resolve_settings(hub(RecordingAdapter())) is None


def test_an_object_without_publish_is_a_config_error(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert resolve_settings(hub(InMemoryWebSocketAdapter())) is None  # Asok's own: the single process
    with pytest.raises(ClusterConfigError, match="NotPublishing"):
        resolve_settings(hub(type("NotPublishing", (), {})()))
