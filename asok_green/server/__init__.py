"""The gevent shell: sockets, greenlets and the hub that applies the core's decisions.

The pywsgi handler's hooks, the connection (reader, writer, close
handshake), the hub (applies state transitions, then fans out), keep-alive,
session re-checks, work offloaded to threads, TLS and listeners. May import
``core``, ``protocol``, gevent and gevent-websocket; never the layers above
(cluster, history, bridge, ops, api, process), which plug into it through the
hub's public methods and the handler's hooks.
"""
