"""The connections-per-route gauge: each held path is matched against the routes once while it is held."""

from __future__ import annotations

import pytest

from asok_green.api.websocket_server import WebSocketServer
from asok_green.ops.samples import hub_samples
from asok_green.server import hub as hub_module

pytestmark = pytest.mark.quick


class Held:
    """Stands for a connection: the gauge reads its queued bytes only."""

    pending_bytes = 0


def test_each_held_path_is_matched_once_and_counted_under_its_route():
    hub = WebSocketServer()
    try:
        hub.on("/p/[id]")(lambda conn, message: None)
        hub.on("/room")(lambda conn, message: None)
        matched = []
        match = hub.match
        hub.match = lambda path: matched.append(path) or match(path)
        for i in range(300):
            hub.state.by_path[f"/p/{i}"] = {Held(): None}
        hub.state.by_path["/room"] = {Held(): None, Held(): None}

        def gauge() -> dict[str, int]:
            return {s[2]["route"]: s[3] for s in hub_samples(hub) if s[0] == "asok_green_connections"}

        assert gauge() == {"/p/[id]": 300, "/room": 2}
        assert len(matched) == 301
        matched.clear()
        del hub.state.by_path["/p/0"]
        hub.state.by_path["/p/new"] = {Held(): None}
        assert gauge() == {"/p/[id]": 300, "/room": 2}
        assert matched == ["/p/new"]  # only the path that came
    finally:
        hub.node.stop()
        hub_module._INSTANCES.remove(hub)
