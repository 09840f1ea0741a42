"""GraphQL subscriptions on ``/graphql`` under ``asok serve --gevent``, with a real GraphQL client.

gql (its websockets transport) connects to a real server process serving a real
Asok project, negotiates the graphql-transport-ws subprotocol, subscribes to
``userCreated`` (the field Asok's GraphQL module names for the ``User`` model),
and receives the push when a user is saved: by a page (in a pywsgi greenlet),
or by a WebSocket handler through ``asok_green.blocking`` (in a worker thread).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from tests.asok_project import cookie_header, fetch, login, make_project, project_env
from tests.conftest import asok_serve, ws_connect

pytestmark = pytest.mark.timeout(60)

#: Seconds to wait for anything the server should send.
DEADLINE = 15

#: Added to the test project's wsgi.py.
GRAPHQL_WSGI = '''
import os as _os

import asok_green
from asok.orm import MODELS_REGISTRY


@ws.on("/signup")
def signup(conn, message):
    """Create the user named ``message`` in a worker thread; answer with its id."""
    user = asok_green.blocking(
        MODELS_REGISTRY["User"].create, name=message, email=f"{message}@example.com", password=f"{message}-pass-1"
    )
    conn.send(str(user.id))


if _os.environ.get("GRAPHQL_LOGGED_IN_ONLY"):
    # Asok's hook receives conn.request: only logged-in users may use GraphQL.
    app.config["GRAPHQL_AUTHORIZE"] = lambda request: request.user is not None
'''

SIGNUP_PAGE = '''\
"""/signup?name=N: create the user N from a page (Asok's model:created event fires)."""

from asok.orm import MODELS_REGISTRY


def render(request):
    name = request.args.get("name", "")
    user = MODELS_REGISTRY["User"].create(name=name, email=f"{name}@example.com", password=f"{name}-pass-1")
    return request.text(str(user.id))
'''

SUBSCRIPTION = gql("subscription { userCreated { id name email password __typename } }")


@pytest.fixture(scope="module")
def graphql_project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("graphql"), extra_wsgi=GRAPHQL_WSGI)
    (root / "src/pages/signup").mkdir(parents=True)
    (root / "src/pages/signup/page.py").write_text(SIGNUP_PAGE)
    return root


@pytest.fixture(scope="module")
def server(graphql_project, tmp_path_factory):
    proc = asok_serve(graphql_project, tmp_path_factory.mktemp("logs"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def guarded_server(graphql_project, tmp_path_factory):
    """The same project with GRAPHQL_AUTHORIZE: only logged-in users."""
    env = project_env(GRAPHQL_LOGGED_IN_ONLY="1")
    proc = asok_serve(graphql_project, tmp_path_factory.mktemp("logs"), env=env)
    yield proc
    proc.stop()


def new_name() -> str:
    return "u" + uuid.uuid4().hex[:10]


def transport_for(server, cookies: dict | None = None) -> WebsocketsTransport:
    headers = {"Origin": server.url}
    if cookies:
        headers["Cookie"] = cookie_header(cookies)
    return WebsocketsTransport(url=server.ws_url + "/graphql", headers=headers, ack_timeout=DEADLINE)


async def first_push(transport: WebsocketsTransport, trigger: Callable[[], Awaitable[Any]]) -> tuple[Any, Any]:
    """Subscribe to ``userCreated``, run ``trigger`` once the server holds the subscription; return both results."""
    async with Client(transport=transport) as session:
        assert transport.subprotocol == "graphql-transport-ws"
        pushes = session.subscribe(SUBSCRIPTION)
        first = asyncio.ensure_future(pushes.__anext__())
        while not transport.listeners and not first.done():
            await asyncio.sleep(0.01)
        # The server handles one connection's messages in order: a pong means the subscribe was handled.
        transport.pong_received.clear()
        await transport.send_ping()
        await asyncio.wait_for(transport.pong_received.wait(), DEADLINE)
        triggered = await trigger()
        result = await asyncio.wait_for(first, DEADLINE)
        await pushes.aclose()
        return triggered, result


def test_gql_client_gets_user_created_after_a_page_saves_a_user(server):
    name = new_name()

    async def save_in_a_page():
        answer = await asyncio.to_thread(fetch, f"{server.url}/signup?name={name}")
        assert answer.status == 200, answer.text
        return int(answer.text)

    user_id, result = asyncio.run(first_push(transport_for(server), save_in_a_page))
    assert result == {
        "userCreated": {
            "id": user_id,
            "name": name,
            "email": f"{name}@example.com",
            "password": None,  # Asok never resolves a password field
            "__typename": "User",
        }
    }


def test_a_save_inside_blocking_in_a_websocket_handler_is_pushed_too(server):
    name = new_name()

    async def save_in_a_worker_thread():
        def signup():
            client = ws_connect(server, "/signup")
            try:
                client.send(name)
                return int(client.recv())
            finally:
                client.close()

        return await asyncio.to_thread(signup)

    user_id, result = asyncio.run(first_push(transport_for(server), save_in_a_worker_thread))
    assert result["userCreated"]["id"] == user_id
    assert result["userCreated"]["name"] == name


def test_ping_gets_pong_with_its_payload(server):
    client = ws_connect(server, "/graphql", subprotocols=["graphql-transport-ws"])
    try:
        client.send(json.dumps({"type": "ping", "payload": {"n": 1}}))
        assert json.loads(client.recv()) == {"type": "pong", "payload": {"n": 1}}
    finally:
        client.close()


def test_a_client_that_offers_no_subprotocol_is_served_without_one(server):
    client = ws_connect(server, "/graphql")
    try:
        assert "sec-websocket-protocol" not in {k.lower() for k in client.getheaders()}
        client.send(json.dumps({"type": "connection_init"}))
        assert json.loads(client.recv()) == {"type": "connection_ack"}
    finally:
        client.close()


def test_the_first_offered_subprotocol_the_route_speaks_is_chosen(server):
    client = ws_connect(server, "/graphql", subprotocols=["graphql-ws", "graphql-transport-ws"])
    try:
        assert client.getsubprotocol() == "graphql-transport-ws"
    finally:
        client.close()


def test_authorize_hook_reads_conn_request_guest_refused(guarded_server):
    async def connect():
        async with Client(transport=transport_for(guarded_server)):
            pass

    with pytest.raises((TransportError, TransportQueryError, ConnectionError)):
        asyncio.run(connect())
    client = ws_connect(guarded_server, "/graphql", subprotocols=["graphql-transport-ws"])
    try:
        client.send(json.dumps({"type": "connection_init"}))
        assert json.loads(client.recv()) == {
            "type": "connection_error",
            "payload": {"message": "Unauthorized GraphQL access"},
        }
    finally:
        client.close()


def test_authorize_hook_reads_conn_request_logged_in_user_gets_pushes(guarded_server):
    cookies = login(guarded_server.url, "alice")
    name = new_name()

    async def save_in_a_page():
        answer = await asyncio.to_thread(fetch, f"{guarded_server.url}/signup?name={name}")
        return int(answer.text)

    user_id, result = asyncio.run(first_push(transport_for(guarded_server, cookies), save_in_a_page))
    assert result["userCreated"]["id"] == user_id


def test_presence_frames_do_not_reach_graphql_clients(server):
    # bob comes online while a GraphQL client listens: the chat socket hears of it, the GraphQL one does not.
    cookies = login(server.url, "bob")
    name = new_name()
    chat = ws_connect(server, "/chat/general")
    try:

        async def bob_online_then_save():
            bob = await asyncio.to_thread(ws_connect, server, "/chat/general", cookies)
            heard = await asyncio.to_thread(chat.recv)
            answer = await asyncio.to_thread(fetch, f"{server.url}/signup?name={name}")
            bob.close()
            return heard, int(answer.text)

        (heard, user_id), result = asyncio.run(first_push(transport_for(server), bob_online_then_save))
    finally:
        chat.close()
    assert json.loads(heard) == {"op": "broadcast", "type": "presence", "user_id": 2, "status": "online"}
    assert result["userCreated"]["id"] == user_id
