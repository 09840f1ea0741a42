"""The servers under test: how each one is started, where it listens, and how it is stopped."""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .project import project_env

SCRIPTS = pathlib.Path(__file__).resolve().parents[1]
PEERS = SCRIPTS / "peers"
BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Peer:
    """One server under test.

    ``auth``: it understands the Asok session cookie, so the authenticated idle
    run applies. ``http_path``: what wrk requests (an Asok page for Asok apps).
    ``separate_http``: pages are served on a port of their own.
    """

    name: str
    label: str
    auth: bool
    http_path: str
    separate_http: bool = False
    notes: str = ""
    #: The source tree this peer's asok_green is imported from (``--baseline``), or None for this one.
    tree: str | None = None
    #: The file in scripts/peers/ (without ``.py``) when it is not named after the peer, and its options.
    script: str | None = None
    options: tuple[str, ...] = ()
    #: The server runs the app in one worker process it spawns: that child is the process measured.
    worker_child: bool = False
    #: The Python package whose version the report quotes.
    package: str | None = None

    def argv(self, port: int, http_port: int, project: pathlib.Path) -> list[str]:
        """The command that starts this server."""
        if self.name == "asok_green":
            return [str(BIN / "asok"), "serve", "--gevent", "--port", str(port)]
        if self.tree is not None:
            # The entry point names this tree's modules: the other tree is served through its own __main__.
            return [sys.executable, "-m", "asok_green", "serve", "--port", str(port)]
        if self.name == "asok_threaded":
            script = PEERS / "asok_threaded.py"
            return [
                sys.executable,
                str(script),
                "--port",
                str(port),
                "--http-port",
                str(http_port),
                "--project",
                str(project),
            ]
        return [sys.executable, str(PEERS / f"{self.script or self.name}.py"), "--port", str(port), *self.options]

    def installed(self) -> str | None:
        """None when the peer's package imports here, else why it cannot run."""
        if self.package is None:
            return None
        import importlib.util

        if importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed (pip install -e '.[bench]')"
        return None


PEER_LIST = (
    Peer(
        "asok_green",
        "asok_green",
        auth=True,
        http_path="/whoami",
        notes="`asok serve --gevent` on an Asok project (DEBUG off), HTTP and WebSocket on one port",
    ),
    Peer(
        "asok_threaded",
        "Asok threaded",
        auth=True,
        http_path="/whoami",
        separate_http=True,
        notes="asok 0.8 `WebSocketServer` (a thread per connection) on its own port; pages on the "
        "single-threaded wsgiref server of `asok preview`",
    ),
    Peer(
        "gevent_websocket",
        "gevent-websocket",
        auth=False,
        http_path="/",
        notes="bare gevent-websocket 0.10: `pywsgi.WSGIServer` + `WebSocketHandler`, the obvious loops",
    ),
    Peer(
        "websockets_asyncio",
        "websockets",
        auth=False,
        http_path="/",
        notes="websockets (asyncio) `serve()` with its defaults (keepalive pings every 20 s)",
        package="websockets",
    ),
    Peer(
        "uvicorn_websockets",
        "uvicorn+websockets",
        auth=False,
        http_path="/",
        script="asgi_uvicorn",
        options=("--ws", "websockets"),
        package="uvicorn",
        notes="a plain ASGI app on uvicorn with its `websockets` backend, uvloop and httptools "
        "(as `uvicorn[standard]` deploys it), one process",
    ),
    Peer(
        "uvicorn_wsproto",
        "uvicorn+wsproto",
        auth=False,
        http_path="/",
        script="asgi_uvicorn",
        options=("--ws", "wsproto"),
        package="wsproto",
        notes="the same ASGI app on uvicorn with its `wsproto` backend, uvloop and httptools, one process",
    ),
    Peer(
        "aiohttp",
        "aiohttp",
        auth=False,
        http_path="/",
        script="aiohttp_server",
        package="aiohttp",
        notes="aiohttp `web.Application` with `WebSocketResponse` handlers, on uvloop, access log off",
    ),
    Peer(
        "picows",
        "picows",
        auth=False,
        http_path="/",
        script="picows_server",
        package="picows",
        notes="picows (Cython) `ws_create_server`, one `WSListener` per connection (callbacks, no "
        "coroutines), on uvloop",
    ),
    Peer(
        "granian",
        "granian",
        auth=False,
        http_path="/",
        script="granian_rsgi",
        package="granian",
        worker_child=True,
        notes="granian (Rust) with a plain RSGI app (its native interface), one worker process on uvloop; the "
        "worker is measured",
    ),
    Peer(
        "socketify",
        "socketify",
        auth=False,
        http_path="/",
        script="socketify_server",
        package="socketify",
        notes="socketify (uWebSockets, C++): uWS pub/sub topics for the broadcasts, idle timeout off",
    ),
    Peer(
        "uvicorn_h11",
        "uvicorn (h11)",
        auth=False,
        http_path="/",
        script="asgi_uvicorn",
        options=("--ws", "websockets", "--http", "h11"),
        package="uvicorn",
        notes="the same ASGI app on uvicorn with its pure-Python h11 HTTP parser and `websockets` backend",
    ),
)
PEERS_BY_NAME = {peer.name: peer for peer in PEER_LIST}


def baseline_peer(tree: str) -> Peer:
    """asok_green as another source tree has it (``--baseline``), measured beside this one as ``before``."""
    return Peer(
        "asok_green_before",
        "asok_green (before)",
        auth=True,
        http_path="/whoami",
        notes=f"asok_green from {tree}, served the same way",
        tree=str(pathlib.Path(tree).resolve()),
    )


@dataclass
class ServerProcess:
    """A running server; its output goes to ``log``."""

    peer: Peer
    proc: subprocess.Popen
    port: int
    http_port: int
    log: pathlib.Path
    _log_file: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        """The process that serves (``asok serve --gevent`` execs into the server: same pid; a peer
        that runs its app in a worker process it spawns: that worker)."""
        if self.peer.worker_child:
            return self.worker_pid()
        return self.proc.pid

    def worker_pid(self, timeout: float = 30.0) -> int:
        """The only child process of the server (its worker), waited for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                children = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise RuntimeError(f"{self.peer.label} started no worker process")

    def ws_url(self, path: str) -> str:
        """``ws://127.0.0.1:PORT/path``."""
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def http_url(self) -> str:
        """Base URL of the server's pages."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def origin(self) -> str:
        """The Origin a page of this server would send."""
        return self.http_url

    def alive(self) -> bool:
        """Still running?"""
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        """The end of the server's output."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()


def start_server(
    peer: Peer,
    project: pathlib.Path,
    logs: pathlib.Path,
    argv_for: Callable[[int], list[str]] | None = None,
    tag: str = "",
) -> ServerProcess:
    """Start ``peer`` on free ports and wait until it accepts connections (30 s at most).

    ``argv_for(port)`` replaces the peer's own command (for asok_green variants).
    """
    port = free_port()
    http_port = free_port() if peer.separate_http else port
    argv = argv_for(port) if argv_for else peer.argv(port, http_port, project)
    log = logs / f"{peer.name}{tag}-{port}.log"
    log_file = open(log, "wb")
    extra = {"PYTHONPATH": peer.tree} if peer.tree else {}
    env = project_env(PYTHONUNBUFFERED="1", **extra)
    proc = subprocess.Popen(
        argv, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
    )
    server = ServerProcess(peer, proc, port, http_port, log, log_file)
    deadline = time.monotonic() + 30
    pending = {port, http_port}
    while pending and time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"{peer.label} exited with {proc.returncode}:\n{server.tail()}")
        for p in list(pending):
            try:
                socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
                pending.discard(p)
            except OSError:
                pass
        time.sleep(0.05)
    if pending:
        server.stop()
        raise RuntimeError(f"{peer.label} did not listen within 30 s:\n{server.tail()}")
    return server


def variant_argv(options: list[str]) -> Callable[[int], list[str]]:
    """``argv_for`` running asok_green through scripts/peers/asok_green_variant.py with ``options``."""
    return lambda port: [sys.executable, str(PEERS / "asok_green_variant.py"), "--port", str(port), *options]
