"""The gevent shell: sockets, greenlets and the hub that applies the core's decisions.

The pywsgi handler's hooks (``handler``, with the lean ``upgrade`` path) and
its server class (``green_server``), a connection's ``lifecycle``, the
connection itself in three layers of one object (``outbound``: writer and
closing handshake; ``inbound``: reader; ``connection``: what handlers call),
the ``readers`` that serve every watched connection's reads in turn, the hub
(applies state transitions, then fans out), keep-alive, session
re-checks, work offloaded to threads, TLS and listeners. May import ``core``,
``protocol``, gevent and gevent-websocket; never the layers above (cluster,
history, bridge, ops, api, process), which plug into it through the hub's
public methods and the handler's ``endpoints`` (composed in
``asok_green.api.serving``).
"""
