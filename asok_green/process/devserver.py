"""``asok dev --gevent``: one port, one gevent process at a time, restarted when the project changes.

This parent process is never monkey-patched and never imports the project. It
owns the listening socket, and hands it to each server process it starts
(``python -m asok_green.process.dev_worker --fd N``), so the port keeps accepting while
new code loads: a client that connects during a restart waits in the listen
backlog and is answered by the next process, never refused. On a change to a
``.py``, ``.html`` or ``.env`` file under the project (watched by ``watchfiles``)
the parent sends the running server SIGHUP, which closes its WebSockets with
1012 (Service Restart) so clients reconnect, waits for it to exit, then starts
the next. A server whose code does not load prints the traceback and answers
every request with it until the next change.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..server.listeners import listen

#: File names whose change restarts the server: code, templates and the environment.
WATCHED_SUFFIXES = (".py", ".html")
WATCHED_NAMES = (".env",)
#: Folders whose files never restart the server, on top of watchfiles' defaults (.git, .venv, __pycache__...).
IGNORED_DIRS = ("venv", "uploads", ".asok", "deployment", "backups", "node_modules")

#: How long a server gets to close its WebSockets and exit before it is killed.
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class DevOptions:
    """What ``asok dev --gevent`` was asked to serve."""

    root: str
    host: str = "127.0.0.1"
    port: int = 8000
    app: str = "wsgi:app"
    log_level: str = "info"
    tls_argv: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """The address a browser opens."""
        scheme = "https" if self.tls_argv else "http"
        return f"{scheme}://{self.host}:{self.port}"


def is_watched(path: str) -> bool:
    """True if a change to ``path`` should restart the server (its name, not its folders, decides)."""
    name = os.path.basename(path)
    return name in WATCHED_NAMES or name.endswith(WATCHED_SUFFIXES)


def read_dotenv(path: str) -> dict[str, str]:
    """``KEY=value`` lines of a ``.env`` file, read as Asok's CLI reads them (no quotes removed)."""
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.read(1_000_000).splitlines()
    except OSError:
        return values
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def environment_without_dotenv(environ: Mapping[str, str], dotenv_path: str) -> dict[str, str]:
    """``environ`` less the values Asok's CLI copied into it from ``.env``.

    Asok never overrides a variable that is already set, so a server started
    with them would keep the ``.env`` of the moment ``asok dev`` started; each
    server reads ``.env`` afresh instead.
    """
    dotenv = read_dotenv(dotenv_path)
    return {key: value for key, value in environ.items() if dotenv.get(key) != value}


def worker_argv(options: DevOptions, fd: int) -> list[str]:
    """The command line of one server process serving the inherited socket ``fd``."""
    return [
        sys.executable,
        "-m",
        "asok_green.process.dev_worker",
        "--fd",
        str(fd),
        "--host",
        options.host,
        "--app",
        options.app,
        "--log-level",
        options.log_level,
        *options.tls_argv,
    ]


def start_worker(options: DevOptions, listener: socket.socket, env: Mapping[str, str]) -> subprocess.Popen:
    """Start a server process on ``listener``."""
    fd = listener.fileno()
    return subprocess.Popen(worker_argv(options, fd), cwd=options.root, env=dict(env), pass_fds=(fd,))


def stop_worker(worker: subprocess.Popen | None, signum: int, timeout: float = STOP_TIMEOUT) -> None:
    """Send ``signum`` and wait for the process to exit; kill it after ``timeout`` seconds."""
    if worker is None or worker.poll() is not None:
        return
    try:
        worker.send_signal(signum)
        worker.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _project_filter():
    from watchfiles import DefaultFilter

    class ProjectFilter(DefaultFilter):
        """watchfiles' default filter, narrowed to the files that restart the server."""

        ignore_dirs = (*DefaultFilter.ignore_dirs, *IGNORED_DIRS)

        def __call__(self, change, path: str) -> bool:
            return is_watched(path) and super().__call__(change, path)

    return ProjectFilter()


def describe(paths: Iterable[str], root: str) -> str:
    """Changed paths relative to the project, for the log line."""
    names = sorted({os.path.relpath(path, root) for path in paths})
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def run_dev(options: DevOptions, env: Mapping[str, str]) -> int:
    """Serve ``options.root`` until SIGINT or SIGTERM, restarting on changes; the exit status."""
    from watchfiles import watch

    try:
        listener = listen(options.host, options.port)
    except OSError as exc:
        print(f"asok dev --gevent: cannot listen on {options.host}:{options.port}: {exc.strerror or exc}", flush=True)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(
        f"asok_green: dev server on {options.url} (HTTP and WebSocket on one port); "
        f"restarts on .py, .html and .env changes under {options.root}",
        flush=True,
    )
    worker = start_worker(options, listener, env)
    try:
        changes = watch(
            options.root,
            watch_filter=_project_filter(),
            stop_event=stop,
            raise_interrupt=False,
            debounce=400,
            rust_timeout=2000,
            yield_on_timeout=True,  # an empty set every 2 s: time to see whether the worker died
        )
        reported = False
        for changed in changes:
            if not changed:
                if worker.poll() is not None and not reported:
                    print(f"asok_green: the server exited with {worker.returncode}; waiting for a change", flush=True)
                    reported = True
                continue
            reported = False
            what = describe((path for _, path in changed), options.root)
            print(f"asok_green: {what} changed: restarting", flush=True)
            stop_worker(worker, signal.SIGHUP)
            worker = start_worker(options, listener, env)
    finally:
        stop_worker(worker, signal.SIGTERM)
        listener.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    """``python -m asok_green.process.devserver [--host H] [--port P] [--app module:attr]`` in the project root."""
    import argparse

    from .command_lines import tls_argv

    parser = argparse.ArgumentParser(prog="python -m asok_green.process.devserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--app", default="wsgi:app")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args(argv)
    tls = tuple(tls_argv(args.certfile, args.keyfile))
    options = DevOptions(os.getcwd(), args.host, args.port, args.app, args.log_level, tls)
    sys.exit(run_dev(options, os.environ))


if __name__ == "__main__":
    main()
