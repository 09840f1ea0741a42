"""The public API, composed: ``WebSocketServer`` and what ``asok_green``'s other top-level names are made of.

Here the layers meet: ``websocket_server`` is the facade over the hub
(asok_green.server.hub) with the doc's decorators (``on``, ``on_connect``,
``on_disconnect``, ``room_authorizer``, ``keep_history``), the app it binds
(Asok's live operators, GraphQL) and, at start-up, the background jobs, the
cluster it joins and the history it opens; ``serving`` plugs the endpoints
and hooks of the layers above the server (the resume client's script from
``bridge``, the dashboard and metrics from ``ops``) into the server's seams
and builds :func:`asok_green.serve` / :func:`asok_green.make_server` from
them. May import every layer below it (protocol, core, server, cluster,
history, bridge, ops); never ``process``, which drives it.
"""
