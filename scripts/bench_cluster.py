"""Cross-node fan-out: broadcast deliveries per second with 2 workers (joined through Redis) vs 1.

    python scripts/bench_cluster.py [--quick] [--json]

For each setup the script starts a real server on a free loopback port
(``python -m asok_green serve``, then the same with ``--workers 2`` and a
redis-server of its own), connects ``clients`` receivers to ``/fan``, has one of
them send ``messages`` messages, and times until every receiver has every
message. ``/fan`` broadcasts what it receives, so with 2 workers about half the
deliveries cross from one process to the other through Redis. The receivers run
in a separate process (one epoll loop). Everything shares the machine's cores:
the numbers compare the two setups measured in the same run, nothing else.

``run(quick)`` returns the results as a dict, for scripts/bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

BENCH_APP = """\
import os

from asok_green import WebSocketServer

ws = WebSocketServer()


@ws.on("/fan")
def fan(conn, message):
    if message == "?pid":
        conn.send(str(os.getpid()))
    else:
        ws.broadcast("/fan", message)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"bench\\n"]
"""

QUICK = {"clients": 100, "messages": 200, "size": 64}
FULL = {"clients": 400, "messages": 1000, "size": 64}


def run(quick: bool = False) -> dict:
    """Measure 1 worker, then 2 workers through Redis; the results as a JSON-ready dict.

    Keys: ``name``, ``clients``, ``messages``, ``size`` (bytes per message),
    ``cpus``, ``results`` (one dict per setup: ``workers``, ``delivered``,
    ``seconds``, ``per_second``, ``clients_per_worker``), ``speedup`` (2 workers'
    per_second over 1 worker's), and ``skipped`` (a reason, when redis-server is
    not installed: then only the 1-worker result is there).
    """
    params = QUICK if quick else FULL
    report = {"name": "cross-node fan-out", **params, "cpus": os.cpu_count(), "results": []}
    redis_binary = shutil.which("redis-server")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        folder = pathlib.Path(tmp)
        (folder / "benchapp.py").write_text(BENCH_APP)
        report["results"].append(_measure(folder, 1, None, params))
        if redis_binary is None:
            report["skipped"] = "redis-server is not installed (apt-get install redis-server): no 2-worker run"
            return report
        redis = _start_redis(redis_binary, folder)
        try:
            url = f"redis://127.0.0.1:{redis[1]}/0"
            report["results"].append(_measure(folder, 2, url, params))
        finally:
            _stop(redis[0])
    one, two = report["results"]
    report["speedup"] = round(two["per_second"] / one["per_second"], 2) if one["per_second"] else None
    return report


# -- servers -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(binary: str, folder: pathlib.Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(folder)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port, proc)
    return proc, port


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def _start_server(folder: pathlib.Path, workers: int, redis_url: str | None) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    argv = [sys.executable, "-m", "asok_green", "serve", "--app", "benchapp:app", "--port", str(port)]
    argv += ["--log-level", "warning", "--workers", str(workers)]
    env = {**os.environ, "WS_ALLOW_NO_ORIGIN": "1", "PYTHONPATH": str(ROOT)}
    if redis_url:
        env["WS_REDIS_URL"] = redis_url
    log = open(folder / f"server-{workers}.log", "wb")
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    _wait_port(port, proc)
    if workers > 1:
        deadline = time.monotonic() + 30
        while b"worker processes" not in (folder / f"server-{workers}.log").read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((folder / f"server-{workers}.log").read_text(errors="replace"))
            time.sleep(0.05)
    return proc, port


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure(folder: pathlib.Path, workers: int, redis_url: str | None, params: dict) -> dict:
    server, port = _start_server(folder, workers, redis_url)
    try:
        argv = [sys.executable, __file__, "--client", "--port", str(port)]
        for option in ("clients", "messages", "size"):
            argv += [f"--{option}", str(params[option])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"bench client failed:\n{done.stderr}")
        result = json.loads(done.stdout)
    finally:
        _stop(server)
    result["workers"] = workers
    return result


# -- the receivers (run in their own process) ----------------------------------------

_HANDSHAKE = (
    "GET /fan HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _client_frame(text: str) -> bytes:
    """A masked text frame (mask 0: the payload goes as it is)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes([0x81, 0x80 | size])
    else:
        header = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    return header + b"\0\0\0\0" + payload


def _connect(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_HANDSHAKE.format(port=port).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    return sock, rest


def _frames(buffer: bytearray) -> tuple[list[bytes], int]:
    """Complete server frames at the start of ``buffer``: their payloads, and the bytes they use."""
    payloads, pos, end = [], 0, len(buffer)
    while end - pos >= 2:
        size = buffer[pos + 1] & 0x7F
        start = pos + 2
        if size == 126:
            if end - pos < 4:
                break
            size, start = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), pos + 4
        elif size == 127:
            if end - pos < 10:
                break
            size, start = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), pos + 10
        if end < start + size:
            break
        payloads.append(bytes(buffer[start : start + size]))
        pos = start + size
    return payloads, pos


def _recv_one(sock: socket.socket, buffer: bytearray) -> bytes:
    """The next message on a socket that expects exactly one."""
    while True:
        payloads, used = _frames(buffer)
        if payloads:
            del buffer[:used]
            return payloads[0]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk


def client_main(port: int, clients: int, messages: int, size: int) -> dict:
    """Connect the receivers, send from one of them, count deliveries; the result dict."""
    socks, buffers, pids = [], [], {}
    for _ in range(clients):
        sock, rest = _connect(port)
        buffer = bytearray(rest)
        sock.sendall(_client_frame("?pid"))
        pid = _recv_one(sock, buffer).decode()
        pids[pid] = pids.get(pid, 0) + 1
        socks.append(sock)
        buffers.append(buffer)
    body = "x" * size
    # One message all the way round first: every node is subscribed and every socket is warm.
    counts = _deliver(socks, buffers, [_client_frame("warm-up")], 1)
    assert counts == clients
    batch = [_client_frame(body) for _ in range(messages)]
    started = time.perf_counter()
    delivered = _deliver(socks, buffers, batch, messages)
    seconds = time.perf_counter() - started
    for sock in socks:
        sock.close()
    return {
        "delivered": delivered,
        "seconds": round(seconds, 3),
        "per_second": round(delivered / seconds),
        "clients_per_worker": sorted(pids.values(), reverse=True),
    }


def _deliver(socks: list, buffers: list, frames: list[bytes], expected: int, timeout: float = 120) -> int:
    """Send ``frames`` from the first socket; read until every socket has ``expected`` messages."""
    selector = selectors.DefaultSelector()
    got = [0] * len(socks)
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    outgoing = memoryview(b"".join(frames))
    sender = socks[0]
    waiting = len(socks)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        if outgoing:
            try:
                outgoing = outgoing[sender.send(outgoing) :]
            except BlockingIOError:
                pass
        for key, _ in selector.select(0.0 if outgoing else 1.0):
            i = key.data
            try:
                chunk = key.fileobj.recv(262144)
            except BlockingIOError:
                continue
            if not chunk:
                raise ConnectionError(f"receiver {i} was closed after {got[i]} messages")
            buffer = buffers[i]
            buffer += chunk
            payloads, used = _frames(buffer)
            del buffer[:used]
            before = got[i]
            got[i] += len(payloads)
            if before < expected <= got[i]:
                waiting -= 1
    selector.close()
    for sock in socks:
        sock.setblocking(True)
    return sum(min(n, expected) for n in got)


# -- command line -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``python scripts/bench_cluster.py [--quick] [--json]``: run and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller run: {QUICK}")
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(client_main(args.port, args.clients, args.messages, args.size)))
        return
    report = run(args.quick)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['name']}: {report['clients']} receivers, {report['messages']} messages of {report['size']} B")
    print(f"{'workers':>8} {'delivered':>10} {'seconds':>8} {'msg/s':>10}  clients per worker")
    for row in report["results"]:
        print(
            f"{row['workers']:>8} {row['delivered']:>10} {row['seconds']:>8} {row['per_second']:>10}  "
            f"{row['clients_per_worker']}"
        )
    if "skipped" in report:
        print(report["skipped"])
    else:
        print(f"2 workers / 1 worker: {report['speedup']}x on {report['cpus']} CPU(s)")


if __name__ == "__main__":
    main()
