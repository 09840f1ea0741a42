"""The smaller edges: ASCII digits only in ``asok_since``, partial replay, and ``event`` on every JSON log line.

A v1 client whose gap is longer than the history is told ``continuity_lost``
(at the offset just before what is still held), then given what is still held,
then the live messages; Python's and the browser's clients take the held
messages as following the notice.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from asok_green.protocol.envelopes import BadSince, Since, parse_since_text
from tests.asok_project import make_project, project_env
from tests.conftest import asok_serve, ws_connect
from tests.raw_client import RawClient
from tests.v1_client import V1Client

SMALL_APP = """
@ws.on("/small/[topic]", history=5)
def on_small(conn, message):
    ws.broadcast(conn.path, message)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project whose ``/small/*`` paths keep 5 messages."""
    return make_project(tmp_path_factory.mktemp("small-project"), extra_wsgi=SMALL_APP)


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """The project served with JSON log lines."""
    proc = asok_serve(project, tmp_path_factory.mktemp("logs"), env=project_env(LOG_FORMAT="json"))
    yield proc
    proc.stop()


@pytest.mark.quick
@pytest.mark.parametrize("digit", ["\u0661", "\u0967", "\uff11", "\u00b9"])
def test_asok_since_takes_ascii_digits_only(digit):
    assert parse_since_text("epoch:12") == Since("epoch", 12)
    with pytest.raises(BadSince):
        parse_since_text(f"epoch:{digit}")
    with pytest.raises(BadSince):
        parse_since_text(f"epoch:1{digit}")


def test_a_non_ascii_digit_in_asok_since_gets_400(server):
    raw = RawClient(server.port)
    try:
        target = "/small/digits?asok_since=epoch:%D9%A1"  # U+0661, ARABIC-INDIC DIGIT ONE
        head = raw.upgrade(target, extra="Sec-WebSocket-Protocol: asok-green.v1\r\n")
        assert head.startswith(b"HTTP/1.1 400"), head
    finally:
        raw.close()


def test_a_gap_past_the_history_is_continuity_lost_then_what_is_held_then_live(server):
    sender = ws_connect(server, "/small/partial")
    client = V1Client(server.ws_url, "/small/partial")
    epoch = client.notice("position")["e"]
    sender.send("first")
    assert client.until_offset(1)[-1]["d"] == "first"
    client.close()
    watcher = V1Client(server.ws_url, "/small/partial")
    for i in range(10):
        sender.send(f"m{i}")
    watcher.until_offset(11)  # all ten are in the history before the client comes back
    watcher.close()
    again = V1Client(server.ws_url, "/small/partial", since=f"{epoch}:1")
    lost = again.notice("continuity_lost")
    assert (lost["e"], lost["o"], lost["reason"], lost["replayed"]) == (epoch, 6, "history_exceeded", 5)
    held = [again.next() for _ in range(5)]
    assert [(f["o"], f["d"]) for f in held] == [(7, "m5"), (8, "m6"), (9, "m7"), (10, "m8"), (11, "m9")]
    sender.send("live")
    assert again.next() == {"s": "/small/partial", "e": epoch, "o": 12, "d": "live"}
    again.close()
    sender.close()


def test_every_json_line_carries_an_event_asoks_own_too(server):
    with urllib.request.urlopen(server.url + "/?from=event-test", timeout=5) as response:
        assert response.status == 200
    live = ws_connect(server, "/asok/live")
    live.send(json.dumps({"op": "join", "cid": "c", "name": "NoSuchComponent", "state": "x"}))
    assert json.loads(live.recv())["op"] == "error"
    live.close()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    asok_lines = [line for line in lines if line["logger"].split(".")[0] == "asok"]
    assert {"asok.wsgi", "asok.ws"} <= {line["logger"] for line in asok_lines}, lines
    assert all(line.get("event") for line in lines), [line for line in lines if not line.get("event")]
