"""``python -m asok_green.process.serve_worker``: one of the processes that ``--workers N`` starts.

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

from ..server.listeners import inherited_listener, listen, tell_parent_ready  # noqa: E402


def reuse_port_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening socket on ``host:port`` that other processes may also bind (``SO_REUSEPORT``)."""
    sock = listen(host, port, reuse_port=True, backlog=backlog)
    sock.set_inheritable(False)
    return sock


def _watch_parent(server: Any) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        gevent.sleep(1.0)
    server.shutdown()


def serve_worker(app: Any, host: str, port: int, fd: int | None = None) -> None:
    """Serve ``app`` and its WebSockets on a shared ``host:port`` until SIGTERM, SIGINT, SIGHUP or orphaning.

    ``fd`` is the listening socket the parent passed down (else one is bound
    here). SIGHUP drains: a new worker already serves in this one's place.
    """
    from ..api.serving import make_server
    from .drain import drain

    listener = inherited_listener(fd) if fd is not None else reuse_port_listener(host, port)
    server = make_server(app, host=host, port=port, listener=listener)
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, gevent.spawn, server.shutdown)
    gevent.signal_handler(signal.SIGHUP, gevent.spawn, drain, server)
    tell_parent_ready()
    gevent.spawn(_watch_parent, server)
    server.stopped.wait()


def main(argv: list[str] | None = None) -> None:
    """Parse the worker's command line (as ``python -m asok_green serve``'s) and serve."""
    from ..api.websocket_server import WebSocketServer
    from ..bridge import bootstrap
    from ..cluster.redis_node import ClusterConfigError, resolve_settings
    from ..core.origins import InsecureOriginPolicy
    from .logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m asok_green.process.serve_worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", default="wsgi:app")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--fd", type=int, help="a listening socket inherited from the parent")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        bootstrap.require_monkey_patched()
        bootstrap.install_dropin(WebSocketServer)
        app = bootstrap.load_app(args.app)
        configure_logging(args.log_level, getattr(app, "config", None))
        for hub in WebSocketServer.instances() or [WebSocketServer(app=app)]:
            hub.bind_app(hub.app or app)
            resolve_settings(hub)
        serve_worker(app, args.host, args.port, args.fd)
    except (bootstrap.BootstrapError, ClusterConfigError, InsecureOriginPolicy) as exc:
        print(f"asok_green: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as exc:
        print(f"asok_green: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
