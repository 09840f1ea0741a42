"""The cluster's outbox: the envelopes broadcasts travel in, as Asok's ``RedisWebSocketAdapter`` reads them."""

from __future__ import annotations

import base64
import json

import pytest

from asok_green.cluster.outbox import Outbox, message_envelope
from asok_green.protocol.outgoing import Outgoing

pytestmark = pytest.mark.quick


class Pipe:
    """A Redis pipeline that notes what it is asked to publish."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []

    def publish(self, channel: str, data: str) -> None:
        self.published.append((channel, json.loads(data)))


def test_text_and_binary_travel_as_asok_envelopes_them():
    assert json.loads(message_envelope("path", "/chat", Outgoing.of("hi"), "n1")) == {
        "target": "path",
        "name": "/chat",
        "msg": "hi",
        "node_id": "n1",
    }
    binary = json.loads(message_envelope("room", "general", Outgoing.of(b"\x00\xff"), "n1"))
    assert binary["target"] == "room" and binary["binary"] is True
    assert base64.b64decode(binary["msg"]) == b"\x00\xff"


def test_a_signal_travels_as_a_room_broadcast_flagged_live_only():
    outbox = Outbox("asok:ws", "n1")
    assert outbox.add("signal", "general", Outgoing.of('{"type": "typing"}'))
    assert outbox.add("room", "general", Outgoing.of("a message"))
    pipe = Pipe()
    assert outbox.write_batch(pipe) == 2
    (signal_channel, signal), (message_channel, message) = pipe.published
    assert signal_channel == message_channel == "asok:ws:room:general"  # Asok's nodes hear both
    assert signal == {"target": "room", "name": "general", "msg": '{"type": "typing"}', "node_id": "n1", "signal": True}
    assert "signal" not in message
