"""A real redis-server for the multi-process tests, and helpers to read what clients receive.

`RedisServer(folder)` starts `redis-server` on a free loopback port with no
persistence (a restart loses every key, as a crashed Redis would), and can be
stopped and started again on the same port. Without redis-server installed the
tests that need it fail when CI=true and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import sqlite3
import subprocess
import time

import pytest
import websocket

from tests.asok_project import project_env
from tests.conftest import ServerProcess, asok_serve, free_port

#: Routes appended to a test project's wsgi.py, for tests that run several processes.
NODE_ROUTES = """
import os as _os


@ws.on("/node")
def node(conn, message):
    conn.send_json({"pid": _os.getpid(), "node": ws.cluster.node_id if ws.cluster else None})


@ws.on("/fanout")
def fanout(conn, message):
    ws.broadcast("/fanout", message)
"""


def need_redis_server() -> str:
    """The path of redis-server; without one, fail under CI=true and skip elsewhere."""
    path = shutil.which("redis-server")
    if path is None:
        message = (
            "redis-server is not installed: `apt-get install -y redis-server` "
            "(scripts/test installs it when run as root)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    """A redis-server process on 127.0.0.1, its files in ``folder``."""

    def __init__(self, folder: pathlib.Path):
        """Start it and wait until it answers PING."""
        self.binary = need_redis_server()
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start (again) on the same port, with an empty data set."""
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
            "--logfile",
            str(self.folder / f"redis-{self.port}.log"),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self.command("PING") == "+PONG":
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10s")

    def stop(self) -> None:
        """Stop it (its data is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def command(self, *args: str) -> str:
        """Send one command in RESP and return the first line of the answer."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(payload.encode())
            return sock.recv(65536).decode().split("\r\n")[0]


def recv_json(client, want, timeout: float = 5.0) -> dict:
    """The next JSON message for which ``want(message)`` is true, skipping the others."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no matching message in time")
        client.settimeout(left)
        try:
            text = client.recv()
        except websocket.WebSocketTimeoutException:
            raise AssertionError("no matching message in time") from None
        try:
            message = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(message, dict) and want(message):
            return message


def presence_of(user_id: int):
    """A ``want`` for :func:`recv_json`: presence broadcasts about ``user_id``."""
    return lambda m: m.get("type") == "presence" and m.get("user_id") == user_id


def is_presence(message: dict) -> bool:
    """True for presence broadcasts and presence lists."""
    return message.get("type") in ("presence", "presence_list")


def next_presence_event(client, timeout: float = 5.0) -> dict:
    """The next presence broadcast or presence list, skipping everything else."""
    return recv_json(client, is_presence, timeout)


def recv_texts(client, count: int, timeout: float = 5.0) -> list:
    """The next ``count`` messages that are not JSON broadcasts (presence and such)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        client.settimeout(max(0.01, deadline - time.monotonic()))
        message = client.recv()
        if isinstance(message, str) and message.startswith('{"op": "broadcast"'):
            continue
        got.append(message)
    return got


class Clients:
    """WebSocket clients opened by one test, all closed by :meth:`close_all`.

    A server stopping waits (bounded) for its clients to answer its close frame:
    closing them first keeps the tests fast.
    """

    def __init__(self, timeout: float = 5):
        """No client yet; ``timeout`` is each new client's, for its handshake and its reads."""
        self.opened: list = []
        self.timeout = timeout

    def connect(self, server, path: str, **kwargs):
        """``ws_connect(server, path, **kwargs)``, remembered."""
        from tests.conftest import ws_connect

        kwargs.setdefault("timeout", self.timeout)
        client = ws_connect(server, path, **kwargs)
        self.opened.append(client)
        return client

    def node_info(self, server, cookies=None) -> dict:
        """Which process (``pid``) and cluster ``node`` answer a new /node connection (kept open)."""
        client = self.connect(server, "/node", cookies=cookies)
        client.send("?")
        info = json.loads(recv_texts(client, 1)[0])
        info["client"] = client
        return info

    def close_all(self) -> None:
        """Close every client still open."""
        for client in self.opened:
            try:
                client.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass
        self.opened.clear()


#: WS_PRESENCE_TTL of the test nodes: a node gone silent is dropped within about 2 s.
TTL = 1.5


def user_ids(project: pathlib.Path) -> dict[str, int]:
    """name -> user id, from ``project``'s database."""
    with sqlite3.connect(project / "db.sqlite3") as db:
        return dict(db.execute("SELECT name, id FROM users"))


def node_env(redis: RedisServer, **extra: str) -> dict[str, str]:
    """The environment of a node of ``redis``'s cluster; sessions in files, so every node knows every login."""
    return project_env(
        WS_ADAPTER="redis", WS_REDIS_URL=redis.url, WS_PRESENCE_TTL=str(TTL), SESSION_BACKEND="file", **extra
    )


def start_node(project, tmp, redis: RedisServer) -> ServerProcess:
    """A node: `asok serve --gevent` on a port of its own, in ``redis``'s cluster."""
    node = asok_serve(project, tmp, env=node_env(redis))
    node.wait_for_log("joined the cluster")
    return node
