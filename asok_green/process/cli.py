"""Command lines: ``asok serve --gevent``, ``asok dev --gevent``, ``asok deploy --gevent`` and ``python -m asok_green``.

This module imports nothing that opens sockets or threads: the ``asok`` CLI
loads it through its ``asok.commands`` entry point, and that process is never
monkey-patched. ``asok serve --gevent`` therefore replaces itself with
``python -m asok_green serve``, whose first act is to patch; ``asok dev
--gevent`` stays an unpatched parent that restarts patched server processes
(``devserver``). ``--certfile``/``--keyfile`` make either serve https and wss.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Protocol

from .command_lines import serve_argv, tls_argv

__all__ = ["DEFAULT_APP", "main", "register", "serve_argv", "tls_argv"]

DEFAULT_APP = "wsgi:app"
_UNSUPPORTED = (
    "asok serve: only `asok serve --gevent` is provided (by asok_green): it serves the "
    "app's pages and WebSockets from one gevent process on one port.\n"
    "usage: asok serve --gevent [--host 127.0.0.1] [--port 8000] [--app wsgi:app] [--workers N]\n"
    "                           [--certfile cert.pem --keyfile key.pem]\n"
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
    _add_tls_options(parser)


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--certfile", help="PEM certificate chain: serve https and wss on the port")
    parser.add_argument("--keyfile", help="PEM private key of --certfile (if not inside it)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class Subcommands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as the ``asok`` CLI's extensions use it."""

    #: The parser of each command added so far, by name.
    choices: dict[str, argparse.ArgumentParser]

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """Add the command ``name`` and return its parser."""


def register(subparsers: Subcommands) -> None:
    """The ``asok.commands`` entry point: adds ``asok serve``, and ``--gevent`` to ``dev`` and ``deploy``."""
    parser = subparsers.add_parser("serve", help="serve pages and WebSockets on one port (asok_green)")
    parser.add_argument("--gevent", action="store_true", help="serve from one gevent process (required)")
    _add_serve_options(parser)
    parser.set_defaults(func=run_asok_serve)
    _extend_dev_command(subparsers)


class _GeventDev(argparse.Action):
    """``asok dev --gevent``: sends the command to asok_green's reloading server.

    Asok dispatches its built-in commands by name before it looks at ``func``;
    renaming the command in the namespace leaves plain ``asok dev`` to Asok.
    """

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        """A flag (no value), False unless given."""
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None):
        """Mark the namespace as a gevent dev run."""
        setattr(namespace, self.dest, True)
        namespace.command = "dev --gevent"
        namespace.func = run_asok_dev


def add_dev_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--gevent`` and its options to Asok's ``dev`` parser (which has ``--port``)."""
    parser.add_argument(
        "--gevent", action=_GeventDev, help="one gevent process on one port, reloaded on changes (asok_green)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="with --gevent: address to listen on (default 127.0.0.1)")
    parser.add_argument("--app", default=DEFAULT_APP, help="with --gevent: WSGI app as module:attribute")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_tls_options(parser)


class _GeventDeploy(_GeventDev):
    """``asok deploy --gevent``: asok_green's deploy files (one port) instead of Asok's."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None):
        """Mark the namespace as a gevent deploy run."""
        setattr(namespace, self.dest, True)
        namespace.command = "deploy --gevent"
        namespace.func = run_deploy_command


def add_deploy_gevent_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--gevent`` and asok_green's deploy options to Asok's ``deploy`` parser (which has ``--prod-dir``)."""
    parser.add_argument(
        "--gevent", action=_GeventDeploy, help="nginx site and systemd unit for `asok serve --gevent` (asok_green)"
    )
    _add_deploy_options(parser, with_prod_dir=False)


def _extend_dev_command(subparsers: Subcommands) -> None:
    """Add the ``--gevent`` options to ``dev`` and ``deploy`` now, or as soon as Asok adds their parsers.

    Asok loads extension commands before it registers its own, so they
    usually do not exist yet: the next ``add_parser("dev")`` (and ``"deploy"``)
    on these subparsers is extended as it is made.
    """
    pending = {}
    for name, extend in (("dev", add_dev_options), ("deploy", add_deploy_gevent_options)):
        existing = subparsers.choices.get(name)
        if existing is not None:
            extend(existing)
        else:
            pending[name] = extend
    if not pending:
        return
    add_parser = subparsers.add_parser

    def add_parser_then_extend(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser = add_parser(name, **kwargs)
        extend = pending.pop(name, None)
        if extend is not None:
            extend(parser)
        if not pending:
            del subparsers.add_parser  # back to the class's method
        return parser

    subparsers.add_parser = add_parser_then_extend


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


def _check_tls_or_exit(command: str, args: argparse.Namespace) -> None:
    from ..server.tls import TLSConfigError, check_tls_files

    try:
        check_tls_files(args.certfile, args.keyfile)
    except TLSConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        sys.exit(2)


def run_asok_serve(args: argparse.Namespace) -> None:
    """``asok serve``: with ``--gevent``, become ``python -m asok_green serve`` in the project root."""
    if not args.gevent:
        print(_UNSUPPORTED, file=sys.stderr)
        sys.exit(2)
    root = find_project_root()
    if root is None and args.app == DEFAULT_APP:
        print("asok serve --gevent: no wsgi.py here or in a parent folder", file=sys.stderr)
        sys.exit(2)
    _check_tls_or_exit("asok serve --gevent", args)
    tls = tls_argv(args.certfile, args.keyfile)
    if tls and args.workers > 1:
        print("asok serve --gevent: --certfile with --workers is not supported; use one worker", file=sys.stderr)
        sys.exit(2)
    env = dict(os.environ)
    # The asok CLI sets this to mute app side effects while it runs commands; the server is an app run.
    env.pop("ASOK_CLI", None)
    if root:
        os.chdir(root)
    if args.workers > 1:
        from .supervisor import supervisor_argv

        argv = supervisor_argv(args.workers, args.host, args.port, args.app, args.log_level)
    else:
        argv = serve_argv(args.host, args.port, args.app, args.log_level) + tls
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def run_asok_dev(args: argparse.Namespace) -> None:
    """``asok dev --gevent``: serve the project on one port and restart it when its code changes."""
    root = find_project_root()
    if root is None and args.app == DEFAULT_APP:
        print("asok dev --gevent: no wsgi.py here or in a parent folder", file=sys.stderr)
        sys.exit(2)
    _check_tls_or_exit("asok dev --gevent", args)
    from .devserver import DevOptions, environment_without_dotenv, run_dev

    root = root or os.getcwd()
    os.chdir(root)
    env = environment_without_dotenv(os.environ, os.path.join(root, ".env"))
    env.pop("ASOK_CLI", None)
    options = DevOptions(
        root=root,
        host=args.host,
        port=args.port,
        app=args.app,
        log_level=args.log_level,
        tls_argv=tuple(tls_argv(args.certfile, args.keyfile)),
    )
    sys.exit(run_dev(options, env))


def _add_deploy_options(parser: argparse.ArgumentParser, with_prod_dir: bool = True) -> None:
    if with_prod_dir:
        parser.add_argument("--prod-dir", help="the project's folder on the server (default: this project's folder)")
    parser.add_argument("--name", help="site and unit name (default: the project folder's name)")
    parser.add_argument("--project", help="the project folder, with wsgi.py (default: found from here)")
    parser.add_argument("--host", default="127.0.0.1", help="address the server listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=_default_port(), help="the server's one port (default 8000)")
    parser.add_argument("--server-name", default="_", help="nginx server_name, e.g. example.com (default _)")
    parser.add_argument("--listen", default="80", help="nginx listen: port or address:port (default 80)")
    parser.add_argument("--prefix", default="", help="WebSocket path prefix (WS_PATH), e.g. /ws (default none)")
    parser.add_argument("--user", default="", help="account the unit runs as (default: systemd's)")
    parser.add_argument("--asok", help="the asok executable (default: the one next to this Python)")
    parser.add_argument("--env", action="append", default=[], help="KEY=value for the unit (repeatable)")
    parser.add_argument("--out", help="folder for the files (default: PROJECT/deployment)")


def run_deploy_command(args: argparse.Namespace) -> None:
    """``asok deploy --gevent``: :func:`run_deploy`, then exit with its status."""
    sys.exit(run_deploy(args))


def run_deploy(args: argparse.Namespace) -> int:
    """``asok-green deploy``: write NAME.nginx.conf and NAME.service; 0 on success, 2 on a bad option.

    With ``--prod-dir`` the unit runs there, with ``PROD/venv/bin/asok`` (Asok's
    layout) unless ``--asok`` is given; the files are written in this project.
    """
    from .deploy import DeployError, DeployOptions, write_files

    project = os.path.abspath(args.project) if args.project else find_project_root()
    if project is None:
        print("asok-green deploy: no wsgi.py here or in a parent folder (or give --project)", file=sys.stderr)
        return 2
    prod_dir = os.path.abspath(args.prod_dir) if args.prod_dir else None
    values = {
        "name": args.name or os.path.basename(project.rstrip(os.sep)),
        "project": prod_dir or project,
        "host": args.host,
        "port": args.port,
        "server_name": args.server_name,
        "listen": args.listen,
        "prefix": args.prefix.rstrip("/"),
        "user": args.user,
        "environment": tuple(args.env),
    }
    if args.asok or prod_dir:
        values["asok"] = os.path.abspath(args.asok) if args.asok else os.path.join(prod_dir, "venv", "bin", "asok")
    try:
        options = DeployOptions(**values).checked()
        written = write_files(options, args.out or os.path.join(project, "deployment"))
    except (DeployError, OSError) as exc:
        print(f"asok-green deploy: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def quiet_duplicate_loggers() -> None:
    """Asok gives its loggers handlers of their own: keep their lines from printing twice."""
    asok_logger = logging.getLogger("asok")
    if asok_logger.handlers:
        asok_logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    """``python -m asok_green serve [--host H] [--port P] [--app module:attr] [--certfile F --keyfile F]``.

    Also ``deploy [--server-name example.com] [--prefix /ws] ...`` (deploy files) and ``version``.
    """
    parser = argparse.ArgumentParser(prog="python -m asok_green", description="asok_green server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve a WSGI app and its WebSockets on one port")
    _add_serve_options(serve_parser)
    # A restart's new process serves the listening socket its parent passes down (asok_green.process.restarter).
    serve_parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    commands.add_parser("version", help="print the version")
    _add_deploy_options(commands.add_parser("deploy", help="write an nginx site and a systemd unit for the project"))
    args = parser.parse_args(argv)
    if args.command == "version":
        from .. import __version__

        print(__version__)
        return
    if args.command == "deploy":
        sys.exit(run_deploy(args))
    if args.workers > 1:
        from .supervisor import supervise

        if args.certfile:
            print("asok_green: --certfile with --workers is not supported; use one worker", file=sys.stderr)
            sys.exit(2)
        sys.exit(supervise(args.workers, args.host, args.port, args.app, args.log_level))
    from ..api.websocket_server import WebSocketServer
    from ..bridge import bootstrap
    from .logs import configure_logging

    configure_logging(args.log_level)
    try:
        bootstrap.require_monkey_patched()
        bootstrap.install_dropin(WebSocketServer)
        app = bootstrap.load_app(args.app)
    except bootstrap.BootstrapError as exc:
        print(f"asok_green: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(args.log_level, getattr(app, "config", None))
    quiet_duplicate_loggers()
    from ..api.serving import serve
    from ..cluster.redis_node import ClusterConfigError
    from ..core.origins import InsecureOriginPolicy
    from ..server.tls import TLSConfigError, server_tls_options

    try:
        serve(
            app,
            host=args.host,
            port=args.port,
            **_restart_options(args),
            **server_tls_options(args.certfile, args.keyfile),
        )
    except (InsecureOriginPolicy, ClusterConfigError, TLSConfigError) as exc:
        print(f"asok_green: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"asok_green: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    if args.fd is None:  # stopped before it became the restarting parent, which removes it otherwise
        from .restart_link import remove_channel_dir

        remove_channel_dir()


def _restart_options(args: argparse.Namespace) -> dict[str, Any]:
    """What SIGHUP does to a single server process, and the listener a restarted one inherits.

    The process ``asok serve --gevent`` started hands its port to a successor
    and becomes its parent (``asok_green.process.handoff``); a process started by that
    parent (``--fd``) drains and exits, the parent having started its successor.
    A process started by a restart links up with the one it replaces once it
    listens, and waits for its own successor (``asok_green.process.restart_link``).
    """
    import functools

    if args.fd is None:
        from .handoff import HandOver

        tls = tls_argv(args.certfile, args.keyfile)

        def successor_argv(fd: int) -> list[str]:
            return [*serve_argv(args.host, args.port, args.app, args.log_level), "--fd", str(fd), *tls]

        return {"on_hangup": HandOver(successor_argv)}
    import gevent

    from ..server.listeners import inherited_listener
    from . import restart_link
    from .drain import drain

    gevent.spawn(_stop_when_orphaned)
    peer = os.environ.pop(restart_link.PEER_ENV, None)
    return {
        "on_hangup": drain,
        "listener": inherited_listener(args.fd),
        "on_serving": functools.partial(restart_link.join, peer=peer),
    }


def _stop_when_orphaned() -> None:
    """SIGTERM this process once the parent that started it is gone."""
    import signal

    import gevent

    parent = os.getppid()
    while os.getppid() == parent:
        gevent.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
