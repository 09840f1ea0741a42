"""Choosing the WebSocket subprotocol of a handshake (pure decisions on an environ)."""

from __future__ import annotations

import pytest

from asok_green.protocol.frames import accept_key
from asok_green.protocol.handshake import SUBPROTOCOL_KEY, accept_subprotocol, choose_subprotocol, response_headers

pytestmark = pytest.mark.quick

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def environ(offered: str | None = None) -> dict:
    env = {"HTTP_SEC_WEBSOCKET_KEY": KEY}
    if offered is not None:
        env["HTTP_SEC_WEBSOCKET_PROTOCOL"] = offered
    return env


def test_the_first_offered_that_the_route_accepts_is_chosen():
    offered = environ("graphql-ws, graphql-transport-ws, chat")
    assert choose_subprotocol(offered, ("chat", "graphql-transport-ws")) == "graphql-transport-ws"


def test_nothing_offered_or_nothing_accepted_chooses_none():
    assert choose_subprotocol(environ(), ("graphql-transport-ws",)) is None
    assert choose_subprotocol(environ("graphql-ws"), ("graphql-transport-ws",)) is None
    assert choose_subprotocol(environ("graphql-transport-ws"), ()) is None


def test_the_answer_names_the_chosen_subprotocol():
    env = environ("graphql-transport-ws")
    assert accept_subprotocol(env, ("graphql-transport-ws",)) == "graphql-transport-ws"
    assert ("Sec-WebSocket-Protocol", "graphql-transport-ws") in response_headers(env)


def test_an_answer_without_a_choice_names_no_subprotocol():
    env = environ("graphql-ws")
    env[SUBPROTOCOL_KEY] = "left over"
    assert accept_subprotocol(env, ("graphql-transport-ws",)) is None
    assert response_headers(env) == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(KEY)),
    ]
