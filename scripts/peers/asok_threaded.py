"""Asok's own servers: the threaded ``asok.WebSocketServer`` (a thread per connection) and ``asok preview``'s HTTP.

    python scripts/peers/asok_threaded.py --port PORT --http-port HTTP_PORT --project DIR

Loads DIR/wsgi.py (an Asok project whose wsgi.py has the bench routes, see
scripts/peers/__init__.py) with Asok 0.8's classes, not asok_green's; starts its
WebSocketServer on PORT with ``max_connections`` raised above any bench size,
and serves the app's pages on HTTP_PORT with the single-threaded wsgiref server
that ``asok preview`` uses. WebSockets and pages are on two ports, as in Asok.
"""

import argparse
import os
import resource
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

MAX_CONNECTIONS = 100_000


def load_project(project: str, http_port: int):
    """Import the project's wsgi.py without letting its ``ws.start()`` listen on port 8001."""
    os.chdir(project)
    sys.path.insert(0, project)
    os.environ["ASOK_PORT"] = str(http_port)  # Asok allows http://127.0.0.1:ASOK_PORT as an Origin
    os.environ["ASOK_CLI"] = "true"  # WebSocketServer.start() is a no-op while this is set
    try:
        import wsgi
    finally:
        del os.environ["ASOK_CLI"]
    return wsgi


def quiet_handler():
    """The request handler of ``asok preview`` (wsgiref's own if Asok's moved)."""
    try:
        from asok.cli.server import _QuietHandler

        return _QuietHandler
    except ImportError:
        return WSGIRequestHandler


def main() -> None:
    """Start the WebSocket thread, then serve pages in this thread until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="WebSocket port")
    parser.add_argument("--http-port", type=int, required=True, help="HTTP port for the app's pages")
    parser.add_argument("--project", required=True, help="folder of the Asok project (wsgi.py)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wsgi = load_project(os.path.abspath(args.project), args.http_port)
    ws = wsgi.ws
    ws.host, ws.port, ws.max_connections = args.host, args.port, MAX_CONNECTIONS
    ws.start()
    WSGIServer.allow_reuse_address = True
    httpd = make_server(args.host, args.http_port, wsgi.app, handler_class=quiet_handler())
    print(f"asok threaded: ws://{args.host}:{args.port}, http://{args.host}:{args.http_port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
