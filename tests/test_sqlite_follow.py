"""The SQLite store's follower: what another process appends reaches this one's clients, at a cost set by change.

A real hub and real ``Connection`` objects over gevent socket pairs (as in
tests/test_hub.py), a real history file, and ``asok_green.publish`` writing to
it through a connection of its own, as a script or a worker would. The
follower is driven one look at a time; the end-to-end runs (a script, an
``asok worker``) are in tests/test_publish.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import gevent.socket
import pytest

from asok_green.api.websocket_server import WebSocketServer
from asok_green.history.sqlite_follow import MAX_SHARE, POLL_SECONDS, Follower, next_pause
from asok_green.history.sqlite_store import SqliteStore
from asok_green.publishing import publish
from asok_green.server import hub as hub_module
from asok_green.server.connection import Connection
from tests.test_hub import Peer

pytestmark = [pytest.mark.quick, pytest.mark.timeout(60)]


@pytest.fixture
def served(tmp_path):
    """A hub whose ``/p/[id]`` paths keep history in a SQLite file, its follower, and a way to connect."""
    hub = WebSocketServer(max_queue=1 << 20, close_timeout=1)
    hub.on("/p/[id]", history=50)(lambda conn, message: None)
    hub.on("/q/[id]")(lambda conn, message: None)
    path = str(tmp_path / "history.sqlite3")
    store = SqliteStore(path)
    store.start(hub)  # the file and its tables
    hub.history.store = store
    follower = Follower(hub, path)
    lookups = []
    path_stream = hub.history.path_stream
    hub.history.path_stream = lambda p: lookups.append(p) or path_stream(p)
    made = []

    def connect(path: str) -> tuple[Connection, Peer]:
        a, b = gevent.socket.socketpair()
        conn = Connection(hub, a, ("127.0.0.1", 1), path, {}, user=None)
        assert hub.register(conn)
        made.append((a, b))
        return conn, Peer(b)

    yield SimpleNamespace(hub=hub, follower=follower, connect=connect, lookups=lookups, file=path)
    follower.close()
    store.stop()
    for a, b in made:
        a.close()
        b.close()
    hub.node.stop()
    hub_module._INSTANCES.remove(hub)


def test_a_message_another_process_appends_reaches_a_plain_client(served):
    _, peer = served.connect("/p/1")
    served.follower.look()  # first sight of the stream
    publish("/p/1", "from a worker", path=served.file)
    assert served.follower.look() == 1
    assert peer.texts() == ["from a worker"]
    assert served.follower.look() == 0  # delivered once


def test_a_look_only_looks_up_the_paths_that_came_or_went(served):
    held = [served.connect(f"/{kind}/{i}") for i in range(200) for kind in ("p", "q")]
    served.follower.look()
    assert len(served.lookups) == 400  # the first look: every path held
    served.lookups.clear()
    for _ in range(5):
        served.follower.look()
    assert served.lookups == []  # nothing came or went: no path looked up
    _, late = served.connect("/p/late")
    conn, _ = held[0]
    served.hub.unregister(conn)
    served.follower.look()
    assert served.lookups == ["/p/late"]  # the one that came, and the stream of the one that went let go
    publish("/p/late", "to the late one", path=served.file)
    publish("/p/0", "to nobody here", path=served.file)
    assert served.follower.look() == 1
    assert late.texts() == ["to the late one"]


def test_a_long_look_spaces_the_next_so_the_follower_takes_at_most_its_share_of_a_core():
    assert next_pause(0.0) == next_pause(0.001) == POLL_SECONDS
    spent = 0.05  # a pass over thousands of streams while others append
    pause = next_pause(spent)
    assert spent / (spent + pause) == pytest.approx(MAX_SHARE)
