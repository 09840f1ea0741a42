"""Bounded input to ``/asok/live``'s operators: JSON too long or nested too deep, components never joined.

Each gets a clear ``{"op": "error"}`` frame, the connection stays open, and
the server's log shows no traceback; the lines Asok's own live handler writes
for a client's bad input are held to the log rate limit.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from asok_green.bridge.live import nesting_depth, read_op
from tests.conftest import ws_connect

LIMITS = SimpleNamespace(max_op_bytes=1000, max_op_depth=4)

#: A read receipt whose message id is a list nested 965 deep.
DEEP_RECEIPT = json.dumps({"op": "receipt", "room": "deep"})[:-1] + ', "message_id": ' + "[" * 965 + "]" * 965 + "}"


@pytest.mark.quick
def test_nesting_depth_counts_brackets_outside_strings():
    assert nesting_depth('{"a": [1, {"b": []}]}', 10) == 4
    assert nesting_depth('{"a": "[[[[[[[[{{{{"}', 10) == 1
    assert nesting_depth('["\\"[[[[", [[]]]', 10) == 3
    assert nesting_depth("[" * 500 + "]" * 500, 10) == 11  # counting stops past the limit
    # Strings left open (escaped quotes only) are read once each: a pass over the text, not one per quote.
    assert nesting_depth("[" * 5 + '"' + '\\"' * 100_000, 10) == 5


@pytest.mark.quick
def test_read_op_refuses_what_is_too_long_too_deep_or_not_json():
    assert read_op('{"op": "typing", "room": "r"}', LIMITS) == ({"op": "typing", "room": "r"}, None)
    assert read_op('{"a": [[[1]]]}', LIMITS)[1] is None  # 4 levels: at the limit
    assert "nested too deep" in read_op('{"a": [[[[1]]]]}', LIMITS)[1]
    assert "too long" in read_op('{"op": "' + "x" * 1000 + '"}', LIMITS)[1]
    assert "too long" in read_op('{"op": "' + "\u00e9" * 500 + '"}', LIMITS)[1]  # 1,000 bytes in UTF-8
    assert read_op('{"op": "' + "\u00e9" * 490 + '"}', LIMITS)[1] is None
    assert read_op("{nope", LIMITS)[1] == "invalid JSON"
    assert read_op('{"s": "' + "[" * 900 + '"}', LIMITS)[1] is None  # brackets in a string do not nest


def live(server):
    return ws_connect(server, "/asok/live")


def test_a_receipt_nested_965_deep_gets_an_error_frame_and_no_traceback(server):
    sender, member = live(server), live(server)
    try:
        for client in (sender, member):
            client.send(json.dumps({"op": "join_room", "room": "deep"}))
        for _ in range(1000):
            sender.send(DEEP_RECEIPT)
        errors = [json.loads(sender.recv()) for _ in range(1000)]
        assert all(e == {"op": "error", "message": "JSON nested too deep: at most 32 levels"} for e in errors)
        sender.send(json.dumps({"op": "receipt", "room": "deep", "message_id": [[1]]}))
        receipt = json.loads(member.recv())
        assert receipt["type"] == "receipt" and receipt["message_id"] == [[1]]
    finally:
        sender.close()
        member.close()
    log = server.log()
    assert "Traceback" not in log and "RecursionError" not in log


def test_a_call_for_a_component_that_never_joined_gets_an_error_frame_and_no_traceback(server):
    client = live(server)
    try:
        for op in ("call", "sync"):
            for _ in range(20):
                client.send(json.dumps({"op": op, "cid": "never-joined", "method": "go"}))
                answer = json.loads(client.recv())
                assert answer["op"] == "error" and answer["cid"] == "never-joined"
                assert "join" in answer["message"]
    finally:
        client.close()
    log = server.log()
    assert "Traceback" not in log and "KeyError" not in log


def test_asok_live_errors_a_client_causes_are_held_to_the_log_rate_limit(server):
    client = live(server)
    try:
        for _ in range(40):
            client.send(json.dumps({"op": "join", "cid": "c", "name": "NoSuchComponent", "state": "x"}))
            assert json.loads(client.recv())["op"] == "error"
    finally:
        client.close()
    lines = [line for line in server.log().splitlines() if "Error handling live message" in line]
    assert 1 <= len(lines) <= 10  # log_burst lines per log_interval
