#!/usr/bin/env python
"""What TLS costs asok_green: memory per idle wss connection, and server CPU per TLS handshake.

    python scripts/tls_bench.py [--connections 2000] [--handshakes 500] [--key-type ecdsa|rsa]

Two echo servers (scripts/tls_echo_server.py) are measured in turn, one plain
and one with a certificate made for the run (trustme): ``ws`` and ``wss`` on
the same stack. For each:

- idle memory: the server's resident memory before and after ``--connections``
  idle WebSockets are opened (upgraded, then left silent), divided by their number;
- new connections: ``--handshakes`` connections opened one after another (TCP,
  TLS for wss, the WebSocket upgrade, an echo, a close), with the server's CPU
  time per connection and the rate that implies for one core. Each TLS
  handshake is a full one (no session resumption), the worst case.

The client runs in this process; its own CPU is not counted.
"""

from __future__ import annotations

import argparse
import base64
import os
import pathlib
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from benchlib.procstat import cpu_seconds, rss_bytes, wait_idle  # noqa: E402

SCRIPTS = pathlib.Path(__file__).resolve().parent
REPO = SCRIPTS.parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_certificate(folder: pathlib.Path, key_type: str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A test authority and a server certificate for 127.0.0.1: (ca, cert, key) PEM paths."""
    import trustme

    kind = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
    authority = trustme.CA(key_type=kind)
    issued = authority.issue_cert("127.0.0.1", key_type=kind)
    ca, cert, key = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    authority.cert_pem.write_to_path(str(ca))
    issued.private_key_pem.write_to_path(str(key))
    for index, blob in enumerate(issued.cert_chain_pems):
        blob.write_to_path(str(cert), append=index > 0)
    return ca, cert, key


class EchoServer:
    """scripts/tls_echo_server.py in a process of its own."""

    def __init__(self, tls: tuple[pathlib.Path, pathlib.Path] | None):
        self.port = free_port()
        argv = [sys.executable, str(SCRIPTS / "tls_echo_server.py"), "--port", str(self.port)]
        if tls:
            argv += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the echo server did not listen")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


class Client:
    """Opens WebSockets to the echo server, over TLS when given a client context."""

    def __init__(self, port: int, context: ssl.SSLContext | None):
        self.port = port
        self.context = context

    def open(self) -> socket.socket:
        """A connected, upgraded WebSocket (the socket, ready for frames)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_hostname="127.0.0.1")
        key = base64.b64encode(os.urandom(16)).decode()
        scheme = "https" if self.context else "http"
        request = (
            f"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {scheme}://127.0.0.1:{self.port}\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("closed during the upgrade")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        return sock

    @staticmethod
    def echo(sock: socket.socket) -> None:
        """One masked text frame out, its echo back."""
        payload = b"ping"
        mask = os.urandom(4)
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        got = b""
        while len(got) < 2 + len(payload):
            chunk = sock.recv(64)
            if not chunk:
                raise RuntimeError("closed before the echo")
            got += chunk

    @staticmethod
    def close(sock: socket.socket) -> None:
        """A close frame, then drop the socket."""
        mask = os.urandom(4)
        code = (1000).to_bytes(2, "big")
        try:
            sock.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(code)))
        except OSError:
            pass
        sock.close()


def idle_memory(server: EchoServer, client: Client, count: int) -> dict:
    """Server memory before and after ``count`` idle WebSockets."""
    wait_idle(server.proc.pid)
    before = rss_bytes(server.proc.pid)
    held = [client.open() for _ in range(count)]
    wait_idle(server.proc.pid)
    after = rss_bytes(server.proc.pid)
    for sock in held:
        sock.close()
    return {"rss_before": before, "rss_after": after, "per_connection": (after - before) / count}


def new_connections(server: EchoServer, client: Client, count: int) -> dict:
    """Server CPU per connection opened, echoed once and closed, one after another."""
    wait_idle(server.proc.pid)
    cpu_before, started = cpu_seconds(server.proc.pid), time.monotonic()
    for _ in range(count):
        sock = client.open()
        client.echo(sock)
        client.close(sock)
    elapsed = time.monotonic() - started
    wait_idle(server.proc.pid)
    cpu = cpu_seconds(server.proc.pid) - cpu_before
    return {"server_cpu_per_connection": cpu / count, "per_core_rate": count / cpu if cpu else None, "wall": elapsed}


def measure(name: str, tls: tuple | None, context: ssl.SSLContext | None, args: argparse.Namespace) -> dict:
    server = EchoServer(tls)
    try:
        client = Client(server.port, context)
        result = {"name": name}
        result.update(idle_memory(server, client, args.connections))
        result.update(new_connections(server, client, args.handshakes))
        return result
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """Measure ws, then wss, and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000, help="idle WebSockets held (default 2000)")
    parser.add_argument("--handshakes", type=int, default=500, help="connections opened one after another")
    parser.add_argument("--key-type", choices=["ecdsa", "rsa"], default="ecdsa", help="server key (default ecdsa)")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as folder:
        ca, cert, key = make_certificate(pathlib.Path(folder), args.key_type)
        context = ssl.create_default_context(cafile=str(ca))
        results = [
            measure("ws", None, None, args),
            measure(f"wss ({args.key_type})", (cert, key), context, args),
        ]
    print(f"{args.connections} idle connections; {args.handshakes} new connections (TCP, TLS, upgrade, echo, close)")
    print(f"{'':14} {'KB per idle conn':>17} {'server CPU per new conn':>24} {'new conns/s per core':>21}")
    for result in results:
        rate = result["per_core_rate"]
        print(
            f"{result['name']:14} {result['per_connection'] / 1024:17.1f}"
            f" {result['server_cpu_per_connection'] * 1000:21.2f} ms {rate or 0:21.0f}"
        )


if __name__ == "__main__":
    main()
