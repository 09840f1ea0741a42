"""The command lines of the server processes this package starts (a restart's, a worker's, the dev server's).

Kept apart from the CLI (asok_green.process.cli) so that the supervisor and
the dev server, which the CLI starts, can build them without importing it.
"""

from __future__ import annotations

import os
import sys


def serve_argv(
    host: str, port: int, app: str, log_level: str = "info", entry: tuple[str, ...] = ("asok_green", "serve")
) -> list[str]:
    """The command line of a patched server process (``entry`` is what follows ``python -m``)."""
    options = ["--host", host, "--port", str(port), "--app", app, "--log-level", log_level]
    return [sys.executable, "-m", *entry, *options]


def tls_argv(certfile: str | None, keyfile: str | None) -> list[str]:
    """The TLS options of a server command line, as absolute paths (the server runs in the project root)."""
    argv = []
    for option, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path:
            argv += [option, os.path.abspath(path)]
    return argv
