"""GraphQL subscriptions on ``/graphql``, served by the installed Asok's own handlers.

Asok's threaded ``WebSocketServer`` registers ``/graphql`` for every Asok app:
clients speak the graphql-transport-ws protocol (``connection_init`` /
``connection_ack``, ``subscribe``, ``next``, ``complete``, ``ping`` / ``pong``),
subscribe to ``<model>Created``, ``<model>Updated`` or ``<model>Deleted``
(``userCreated`` for the model ``User``), and each ORM save pushes a ``next``
message with the fields they asked for. Here the same Asok functions (its
GraphQL message handler and its subscriptions' setup, reached through
asok_green.bridge.asok_api) do that work on asok_green's connections; this
module adapts the rest:

* the route accepts the ``graphql-transport-ws`` subprotocol, so the handshake
  answer names it and clients such as gql pick that protocol;
* ``ping`` is answered with ``pong`` (Asok's handler ignores it);
* Asok's model-event listeners run in the loop's thread: a save made inside
  :func:`asok_green.blocking` fires its event in a worker thread, and the hub's
  connections belong to the loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..server.offload import call_on_loop
from . import asok_api

if TYPE_CHECKING:
    from ..server.connection import Connection
    from ..server.hub import WebSocketServer

logger = logging.getLogger("asok_green")

#: The path Asok serves GraphQL subscriptions on.
GRAPHQL_PATH = "/graphql"

#: The WebSocket subprotocol of GraphQL over WebSocket (the ``graphql-ws`` library's protocol).
SUBPROTOCOL = "graphql-transport-ws"

#: The model events Asok's subscriptions follow.
MODEL_EVENTS = ("model:created", "model:updated", "model:deleted")


def on_graphql_message(conn: Connection, message: Any) -> None:
    """Handle one graphql-transport-ws message: ``ping`` here, everything else by Asok's handler."""
    if not isinstance(message, str):
        return  # the protocol is JSON text; Asok ignores what it cannot parse too
    if '"ping"' in message:
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and data.get("type") == "ping":
            pong: dict[str, Any] = {"type": "pong"}
            if "payload" in data:
                pong["payload"] = data["payload"]
            conn.send_json(pong)
            return
    asok_api.handle_graphql_message(conn, message)


def install(hub: WebSocketServer) -> bool:
    """Serve ``/graphql`` on ``hub`` as Asok does, unless a handler is already registered there.

    Returns False (and changes nothing) when the installed Asok has no GraphQL
    module or the path is taken.
    """
    if GRAPHQL_PATH in hub.routes:
        return False
    setup = asok_api.graphql_subscriptions_setup()
    if setup is None:
        return False
    hub.on(GRAPHQL_PATH, subprotocols=(SUBPROTOCOL,))(on_graphql_message)
    # Asok's listeners go on an emitter of their own, which only the loop's thread calls.
    emit = asok_api.listeners_registered_by(lambda: setup(hub))
    _relay_to_loop(emit)
    return True


def _relay_to_loop(emit: Callable[..., None]) -> None:
    """Pass each model event Asok fires on to ``emit``, in the loop's thread."""

    def relay(event: str) -> Callable[[Any], None]:
        def pass_on(obj: Any) -> None:
            call_on_loop(emit, event, obj)

        return pass_on

    for event in MODEL_EVENTS:
        asok_api.on_model_event(event, relay(event))
