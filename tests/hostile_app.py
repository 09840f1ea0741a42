"""A small server for hostile-client tests: ``python tests/hostile_app.py --port N``.

Limits come from the environment (``WS_MAX_QUEUE``, ``WS_PING_INTERVAL``, ...),
as for any asok_green server. Routes:

- ``/echo``: sends every message back.
- ``/count``: counts the messages its handler receives, answers nothing.
- ``/stats``: answers ``{"calls", "stats", "rss_kb", "connections"}`` as JSON.
- ``/pump``: a message ``"N SIZE"`` broadcasts N numbered text messages of SIZE bytes to ``/sink``.
- ``/sink``: receives those broadcasts; its clients send nothing.
- ``/bye``: the handler closes the connection with 4000.
- any HTTP request: a one-line page.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from asok_green.api.serving import serve  # noqa: E402
from asok_green.server.hub import WebSocketServer  # noqa: E402

calls = {"count": 0}


def rss_kb() -> int:
    """This process's resident set size in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class App:
    """The WSGI app: a one-line page; its config lets clients without Origin in."""

    config = {"ALLOW_WEBSOCKET_NO_ORIGIN": True}

    def __call__(self, environ, start_response):
        """Answer every HTTP request with a short page."""
        body = b"hostile app page\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


ws = WebSocketServer()


@ws.on("/echo")
def echo(conn, message):
    """Send the message back."""
    conn.send(message)


@ws.on("/count")
def count(conn, message):
    """Count the call."""
    calls["count"] += 1


@ws.on("/stats")
def stats(conn, message):
    """Tell the client what the server has seen."""
    conn.send_json(
        {"calls": calls["count"], "stats": dict(ws.stats), "rss_kb": rss_kb(), "connections": ws.connection_count}
    )


@ws.on("/pump")
def pump(conn, message):
    """Broadcast N numbered messages of SIZE bytes to /sink."""
    n, size = (int(x) for x in message.split())
    for i in range(n):
        ws.broadcast("/sink", f"{i:08d}".ljust(size, "x"))
    conn.send("pumped")


@ws.on_connect("/sink")
def sink(conn):
    """Nothing: the route exists to be broadcast to."""


@ws.on("/bye")
def bye(conn, message):
    """Close from the server side."""
    conn.close(4000, "bye")


def main(argv=None):
    """Serve on ``--port`` until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    serve(App(), ws, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
