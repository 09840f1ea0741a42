"""``python -m asok_green.serve_worker``: one of the processes that ``--workers N`` starts.

gevent patches the process before anything else is imported. The worker then
serves like ``python -m asok_green serve``, except that it listens with
``SO_REUSEPORT`` (its siblings listen on the same port), insists on a Redis URL
(without one the workers would not be one server), tells its parent when it
listens, and stops when its parent is gone.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402


def reuse_port_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening socket on ``host:port`` that other processes may also bind (``SO_REUSEPORT``)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _tell_parent_ready() -> None:
    fd = os.environ.pop("ASOK_GREEN_READY_FD", None)
    if fd is not None:
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except (OSError, ValueError):
            pass


def _watch_parent(server: Any) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        gevent.sleep(1.0)
    server.shutdown()


def serve_worker(app: Any, host: str, port: int) -> None:
    """Serve ``app`` and its WebSockets on a shared ``host:port`` until SIGTERM, SIGINT or orphaning."""
    from .server import make_server

    server = make_server(app, host=host, port=port, listener=reuse_port_listener(host, port))
    _tell_parent_ready()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.spawn, server.shutdown)
    gevent.spawn(_watch_parent, server)
    server.stopped.wait()


def main(argv: list[str] | None = None) -> None:
    """Parse the worker's command line (as ``python -m asok_green serve``'s) and serve."""
    from . import bootstrap
    from .cli import configure_logging
    from .cluster import ClusterConfigError, resolve_settings
    from .hub import WebSocketServer
    from .origins import InsecureOriginPolicy

    parser = argparse.ArgumentParser(prog="python -m asok_green.serve_worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", default="wsgi:app")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        bootstrap.require_monkey_patched()
        bootstrap.install_dropin()
        app = bootstrap.load_app(args.app)
        configure_logging(args.log_level, getattr(app, "config", None))
        for hub in WebSocketServer.instances() or [WebSocketServer(app=app)]:
            hub.bind_app(hub.app or app)
            resolve_settings(hub)
        serve_worker(app, args.host, args.port)
    except (bootstrap.BootstrapError, ClusterConfigError, InsecureOriginPolicy) as exc:
        print(f"asok_green: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as exc:
        print(f"asok_green: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
