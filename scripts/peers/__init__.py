"""Peer servers for scripts/bench.py: one small file each, the same routes and command line.

    python scripts/peers/<name>.py --port PORT [--host 127.0.0.1]

Every peer serves, on ``ws://HOST:PORT``:

``/echo``
    every message comes back to its sender unchanged.
``/room``
    every connection is a subscriber. The text message ``!bcast COUNT SIZE``
    (the control protocol) makes the server broadcast COUNT JSON messages
    ``{"seq": i, "data": "x" * SIZE}`` to every other ``/room`` connection, each
    serialised once, the way a chat relay would; then it answers the sender
    ``!done COUNT``. A subscriber therefore knows the broadcast reached it when
    its COUNT-th message arrives, and the control client knows when the server's
    loop has finished.
``/shootout``
    the broadcast test of the websocket-shootout: every connection is a
    subscriber; the text message ``{"type": "broadcast", "payload": P}`` makes
    the server send ``{"type": "broadcast", "payload": P}`` (parsed, then
    serialised once) to every ``/shootout`` connection, the sender included.

and answers a plain HTTP GET on its HTTP port with a short 200 (``--http-port``
where HTTP has a port of its own; the same port otherwise).

asok_green itself is not a file here: the bench runs ``asok serve --gevent`` on a
generated Asok project whose wsgi.py has the same routes (benchlib/project.py).
"""
