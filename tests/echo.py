"""Start scripts/echo_server.py as a real server process for a test."""

from __future__ import annotations

import os
import pathlib
import sys

from tests.conftest import ServerProcess, free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
ECHO_SERVER = ROOT / "scripts" / "echo_server.py"


def echo_serve(logs: pathlib.Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """``scripts/echo_server.py`` on a free port; ``args`` are extra command-line options."""
    port = free_port()
    argv = [sys.executable, str(ECHO_SERVER), "--port", str(port), *args]
    return ServerProcess(argv, ROOT, dict(os.environ if env is None else env), port, logs / f"echo-{port}.log")
