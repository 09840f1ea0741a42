"""Command lines: ``asok serve --gevent`` (an ``asok.commands`` entry point) and ``python -m asok_green``.

This module imports nothing that opens sockets or threads: the ``asok`` CLI
loads it through its entry point, and that process is never monkey-patched.
``asok serve --gevent`` therefore replaces itself with ``python -m asok_green
serve``, whose first act is to patch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_APP = "wsgi:app"
_UNSUPPORTED = (
    "asok serve: only `asok serve --gevent` is provided (by asok_green): it serves the "
    "app's pages and WebSockets from one gevent process on one port.\n"
    "usage: asok serve --gevent [--host 127.0.0.1] [--port 8000] [--app wsgi:app] [--workers N]\n"
    "For development use `asok dev`; for Asok's own server, `asok preview`."
)


def _default_port() -> int:
    try:
        return int(os.environ.get("ASOK_PORT", "8000"))
    except ValueError:
        return 8000


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=_default_port(), help="port for HTTP and WebSocket (default 8000)")
    parser.add_argument("--app", default=DEFAULT_APP, help="WSGI app as module:attribute (default wsgi:app)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes sharing the port, joined through Redis (WS_REDIS_URL) when more than 1 (default 1)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """The ``asok.commands`` entry point: adds ``asok serve``."""
    parser = subparsers.add_parser("serve", help="serve pages and WebSockets on one port (asok_green)")
    parser.add_argument("--gevent", action="store_true", help="serve from one gevent process (required)")
    _add_serve_options(parser)
    parser.set_defaults(func=run_asok_serve)


def find_project_root(start: str | None = None) -> str | None:
    """The nearest folder at or above ``start`` that holds a ``wsgi.py``."""
    folder = os.path.abspath(start or os.getcwd())
    for _ in range(10):
        if os.path.isfile(os.path.join(folder, "wsgi.py")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return None


def serve_argv(
    host: str, port: int, app: str, log_level: str = "info", entry: tuple[str, ...] = ("asok_green", "serve")
) -> list[str]:
    """The command line of a patched server process (``entry`` is what follows ``python -m``)."""
    options = ["--host", host, "--port", str(port), "--app", app, "--log-level", log_level]
    return [sys.executable, "-m", *entry, *options]


def run_asok_serve(args: argparse.Namespace) -> None:
    """``asok serve``: with ``--gevent``, become ``python -m asok_green serve`` in the project root."""
    if not args.gevent:
        print(_UNSUPPORTED, file=sys.stderr)
        sys.exit(2)
    root = find_project_root()
    if root is None and args.app == DEFAULT_APP:
        print("asok serve --gevent: no wsgi.py here or in a parent folder", file=sys.stderr)
        sys.exit(2)
    env = dict(os.environ)
    # The asok CLI sets this to mute app side effects while it runs commands; the server is an app run.
    env.pop("ASOK_CLI", None)
    if root:
        os.chdir(root)
    if args.workers > 1:
        from .supervisor import supervise

        os.environ.pop("ASOK_CLI", None)  # the workers inherit this process' environment
        sys.exit(supervise(args.workers, args.host, args.port, args.app, args.log_level))
    argv = serve_argv(args.host, args.port, args.app, args.log_level)
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def configure_logging(level: str) -> None:
    """One line per event on stderr, with time, level and logger."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def quiet_duplicate_loggers() -> None:
    """Asok gives its loggers handlers of their own: keep their lines from printing twice."""
    asok_logger = logging.getLogger("asok")
    if asok_logger.handlers:
        asok_logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    """``python -m asok_green serve [--host H] [--port P] [--app module:attr]``."""
    parser = argparse.ArgumentParser(prog="python -m asok_green", description="asok_green server")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve_options(commands.add_parser("serve", help="serve a WSGI app and its WebSockets on one port"))
    commands.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        from . import __version__

        print(__version__)
        return
    if args.workers > 1:
        from .supervisor import supervise

        sys.exit(supervise(args.workers, args.host, args.port, args.app, args.log_level))
    configure_logging(args.log_level)
    from . import bootstrap

    try:
        bootstrap.require_monkey_patched()
        bootstrap.install_dropin()
        app = bootstrap.load_app(args.app)
    except bootstrap.BootstrapError as exc:
        print(f"asok_green: {exc}", file=sys.stderr)
        sys.exit(2)
    quiet_duplicate_loggers()
    from .cluster import ClusterConfigError
    from .origins import InsecureOriginPolicy
    from .server import serve

    try:
        serve(app, host=args.host, port=args.port)
    except (InsecureOriginPolicy, ClusterConfigError) as exc:
        print(f"asok_green: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"asok_green: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
