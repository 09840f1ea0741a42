"""Limits and the jobs that enforce them, as plain logic: settings, keep-alive, revocation, rate."""

from __future__ import annotations

import io
from types import SimpleNamespace

import gevent.socket
import pytest

from asok_green.bridge.auth import SessionState
from asok_green.core.limits import Limits
from asok_green.core.rate import TokenBucket
from asok_green.server import hub as hub_module
from asok_green.server import keepalive, revocation
from asok_green.server.connection import Connection
from asok_green.server.handler import RequestTooLarge, read_header_block
from asok_green.server.hub import WebSocketServer

pytestmark = pytest.mark.quick


def test_keyword_beats_config_beats_environment():
    limits = Limits.resolve(
        {"max_queue": 10},
        {"WS_MAX_QUEUE": "20", "WS_PING_INTERVAL": "3"},
        {"WS_MAX_QUEUE": "30", "WS_PING_INTERVAL": "4", "WS_CLOSE_TIMEOUT": "2.5"},
    )
    assert (limits.max_queue, limits.ping_interval, limits.close_timeout) == (10, 3.0, 2.5)


def test_defaults_suit_production():
    limits = Limits.resolve({}, {}, {})
    assert limits.max_message_size == 1 << 20 and limits.max_queue == 1 << 20
    assert limits.handshake_timeout == 10 and limits.ping_interval > 0


def test_connection_cap_follows_the_open_files_limit():
    assert Limits(max_connections=0).connection_cap(1000) == 1000 - 64
    assert Limits(max_connections=50).connection_cap(1000) == 50
    assert Limits(max_connections=5000).connection_cap(1000) == 936


def test_unknown_server_option_is_an_error():
    with pytest.raises(TypeError, match="max_mesage_size"):
        WebSocketServer(max_mesage_size=10)


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(0.5) and not bucket.allow(0.5)


def test_header_block_within_budget_is_parsed():
    headers = read_header_block(io.BytesIO(b"Host: a\r\nX-Y: z\r\n\r\nbody"), 100)
    assert headers["Host"] == "a" and headers["X-Y"] == "z"


def test_header_block_over_budget_raises():
    with pytest.raises(RequestTooLarge):
        read_header_block(io.BytesIO(b"X: " + b"a" * 200 + b"\r\n\r\n"), 100)


@pytest.fixture
def server():
    ws = WebSocketServer(close_timeout=30)
    yield ws
    hub_module._INSTANCES.remove(ws)


@pytest.fixture
def conns(server):
    made = []

    def make(n, user_id=None, login_sid=None):
        out = []
        for _ in range(n):
            a, b = gevent.socket.socketpair()
            user = SimpleNamespace(id=user_id) if user_id else None
            conn = Connection(server, a, ("127.0.0.1", 0), "/x", {}, user=user, login_sid=login_sid)
            server.register(conn)
            made.append((a, b))
            out.append(conn)
        return out

    yield make
    for a, b in made:
        a.close()
        b.close()


def test_keepalive_pings_the_quiet_and_closes_the_silent(conns):
    fresh, quiet, silent = conns(3)
    fresh.last_seen, quiet.last_seen, silent.last_seen = 100.0, 85.0, 50.0
    assert keepalive.sweep([fresh, quiet, silent], now=100.0, interval=10, timeout=10) == (1, 1)
    assert not fresh.closed and not quiet.closed
    assert silent.closed and silent.close_code == 1011


def test_recheck_closes_only_connections_of_dead_sessions(conns):
    alive = conns(2, user_id=1, login_sid="s1")
    dead = conns(2, user_id=2, login_sid="s2")
    guest = conns(1)
    asked = []

    def state_of(sid, user_id):
        asked.append((sid, user_id))
        return SessionState.LIVE if sid == "s1" else SessionState.ENDED

    assert revocation.recheck(alive + dead + guest, state_of) == (2, True)
    assert sorted(asked) == [("s1", 1), ("s2", 2)]
    assert all(c.closed and c.close_code == 1008 for c in dead)
    assert not any(c.closed for c in alive + guest)


def test_revoke_session_closes_that_login_everywhere(server, conns):
    tabs = conns(3, user_id=5, login_sid="abc")
    other = conns(1, user_id=6, login_sid="def")
    assert server.revoke_session("abc") == 3
    assert all(t.closed for t in tabs) and not other[0].closed


@pytest.mark.parametrize("word, expected", [("0", False), ("false", False), ("Off", False), ("1", True), ("yes", True)])
def test_yes_no_settings_accept_words(word, expected):
    assert Limits.resolve({}, {}, {"WS_COMPRESSION": word}).compression is expected


def test_a_bad_yes_no_setting_is_an_error():
    with pytest.raises(ValueError, match="yes/no"):
        Limits.resolve({}, {}, {"WS_COMPRESSION": "maybe"})
