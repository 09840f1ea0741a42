"""The public API as Asok users write it: ``WebSocketServer`` and what it wires together.

The facade over the hub (asok_green.server.hub): the doc's decorators
(``on``, ``on_connect``, ``on_disconnect``, ``room_authorizer``,
``keep_history``), the app it binds (Asok's live operators, GraphQL), and at
start-up the background jobs, the cluster it joins and the history it opens.
May import every layer below it (protocol, core, server, cluster, history,
bridge, ops); never ``process``, which serves it.
"""
