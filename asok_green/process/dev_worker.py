"""``python -m asok_green.process.dev_worker``: one server process of ``asok dev --gevent``.

gevent patches the process before anything else is imported. The worker serves
the listening socket it inherited (``--fd``) until its parent says otherwise:
SIGHUP (the project changed) closes every WebSocket with 1012, Service Restart,
so clients reconnect to the next process; SIGTERM or SIGINT closes them with
1001. If the project does not load, the traceback is printed and served as a
500 answer to every request until the parent restarts the worker.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

logger = logging.getLogger("asok_green")

#: The close code that tells a client the server restarts and it should reconnect (RFC 6455, IANA registry).
CLOSE_SERVICE_RESTART = 1012


def close_for_restart(server: Any) -> None:
    """Close every WebSocket with 1012, then stop the server as a shutdown does."""
    logger.info("restarting: closing %d WebSocket(s) with 1012", server.connection_count())
    for hub in server.hubs:
        for conn in hub.connections():
            conn.close(CLOSE_SERVICE_RESTART, "server restarting")
    server.shutdown()


def load_error_app(text: str) -> Any:
    """A WSGI app that answers every request with the load error ``text`` (500)."""
    body = ("The project failed to load; fix it and save to reload.\n\n" + text).encode("utf-8", "replace")

    def app(environ: dict, start_response: Any) -> list[bytes]:
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        start_response("500 Internal Server Error", headers)
        return [body]

    return app


def _stop_when_orphaned(stop: Any) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        gevent.sleep(1.0)
    stop()


def _on_signals(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        gevent.signal_handler(signum, gevent.spawn, handler)


def serve_load_error(listener: socket.socket, text: str, tls: dict) -> None:
    """Answer every request with ``text`` until a signal or the parent's exit."""
    server = WSGIServer(listener, load_error_app(text), log=None, **tls)
    server.start()
    stopped = Event()
    _on_signals({signal.SIGHUP: stopped.set, signal.SIGTERM: stopped.set, signal.SIGINT: stopped.set})
    gevent.spawn(_stop_when_orphaned, stopped.set)
    stopped.wait()
    server.close()


def serve_project(app: Any, listener: socket.socket, tls: dict, url: str) -> None:
    """Serve ``app`` and its WebSockets on ``listener`` until a signal or the parent's exit."""
    from ..api.serving import make_server

    server = make_server(app, listener=listener, **tls)
    print(f"asok_green: dev worker {os.getpid()} serving {url}", flush=True)
    _on_signals(
        {
            signal.SIGHUP: lambda: close_for_restart(server),
            signal.SIGTERM: server.shutdown,
            signal.SIGINT: server.shutdown,
        }
    )
    gevent.spawn(_stop_when_orphaned, server.shutdown)
    server.stopped.wait()


def load_project(spec: str) -> Any:
    """Patch-check, make ``asok.WebSocketServer`` the green one, and import the app."""
    from ..api.websocket_server import WebSocketServer
    from ..bridge import bootstrap

    bootstrap.require_monkey_patched()
    bootstrap.install_dropin(WebSocketServer)
    app = bootstrap.load_app(spec)
    from .cli import quiet_duplicate_loggers

    quiet_duplicate_loggers()
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the inherited socket ``--fd`` with the project's app."""
    from ..server.tls import TLSConfigError, server_tls_options
    from .logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m asok_green.process.dev_worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--app", default="wsgi:app")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    listener = socket.socket(fileno=args.fd)
    try:
        tls = server_tls_options(args.certfile, args.keyfile)
    except TLSConfigError as exc:
        print(f"asok_green: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    port = listener.getsockname()[1]
    url = f"{'https' if tls else 'http'}://{args.host}:{port}"
    try:
        app = load_project(args.app)
    except (Exception, SystemExit):
        text = traceback.format_exc()
        print(text, file=sys.stderr, end="", flush=True)
        print("asok_green: the project failed to load; waiting for a change", file=sys.stderr, flush=True)
        serve_load_error(listener, text, tls)
        return
    try:
        serve_project(app, listener, tls, url)
    except Exception:
        text = traceback.format_exc()
        print(text, file=sys.stderr, end="", flush=True)
        print("asok_green: the server failed to start; waiting for a change", file=sys.stderr, flush=True)
        serve_load_error(listener, text, tls)


if __name__ == "__main__":
    main()
