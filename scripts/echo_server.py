#!/usr/bin/env python
"""An echo server on asok_green's own stack, for conformance suites and load tools.

    python scripts/echo_server.py [--host 127.0.0.1] [--port 9001] [--no-compression]

Every message, text or binary, on every path, is sent back to its sender. The
request goes through everything a user's server has: ``GreenServer`` and its
gevent-websocket handler, the handshake checks, the hub and ``Connection``. Only
two things differ: the route table answers any path, and a handshake without an
Origin header is allowed (test clients send none).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from asok_green.api.serving import serve  # noqa: E402
from asok_green.core.routing import Route  # noqa: E402
from asok_green.server.hub import WebSocketServer  # noqa: E402


class EchoApp:
    """The WSGI app of the echo server: a one-line page, and the config the hub reads."""

    config = {"ALLOW_WEBSOCKET_NO_ORIGIN": True}

    def __call__(self, environ, start_response):
        """Answer every HTTP request with a short text/plain page."""
        body = b"asok_green echo server: open a WebSocket on any path\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


class CatchAllServer(WebSocketServer):
    """A WebSocketServer whose one route matches every path."""

    def __init__(self, **kwargs):
        """Like WebSocketServer; the catch-all route is ``self.catch_all``."""
        super().__init__(**kwargs)
        self.catch_all = Route("/*")

    def match(self, path):
        """Every path gets the catch-all route, with no parameters."""
        return self.catch_all, {}


def echo(conn, message):
    """Send ``message`` back to the connection it came from."""
    conn.send(message)


def main(argv=None):
    """Parse the command line and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--no-compression", action="store_true", help="refuse permessage-deflate")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr)
    # The suite sends messages of up to 16 MiB and reads each echo at once.
    options = {"max_message_size": 64 << 20, "max_queue": 64 << 20}
    if args.no_compression:
        options["compression"] = False
    ws = CatchAllServer(**options)
    ws.catch_all.on_message = echo
    serve(EchoApp(), ws, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
