"""Attacks on the untrusted edge for scripts/adversary.py: HTTP framing, bodies, names, nested JSON.

Each attack runs beside a probe client (round trips on /echo in a thread of
its own), with the server's RSS before and after, and answers one table row:

``smuggle``
    each ambiguous framing (Content-Length with Transfer-Encoding either way,
    two Content-Lengths, ``chunked, identity``, Transfer-Encoding twice,
    ``xchunked``, a space before the colon, a signed length), a second
    request hidden in the body: the answer, and how many times the hidden
    request was served (a second response on the connection).
``malformed``
    no Host on HTTP/1.1, two Hosts, a space before a colon, a folded line,
    an upgrade carrying a body: the status each one gets.
``stalled``
    N POSTs that announce 1 MB, send 5 bytes and go silent: how many the
    server closes (and with what) within the wait, the RSS they cost and what
    is left after.
``cut_short``
    ``Content-Length: 100``, 5 bytes, then half-close: the answers.
``name_storm``
    an ``asok-green.v1`` guest joining and leaving N new rooms with history
    on /asok/live: RSS before and after (asok_green only: "n/a" elsewhere).
``nested_json``
    read receipts whose ``message_id`` is nested 965 deep, and
    ``{"op": "call", "cid": "x"}`` for a component that never joined, on
    /asok/live (asok_green only).
"""

from __future__ import annotations

import json
import math
import re
import selectors
import socket
import threading
import time
from typing import Any

import websocket

from . import procstat
from .latency import round_trips, summary
from .project import BENCH_ROUTES, make_project
from .servers import ServerProcess
from .wsclient import RawClient

__all__ = ["EDGE_ATTACKS", "edge_rows", "make_adversary_project"]

MIB = 1 << 20

#: Routes the name storm and nested JSON need: rooms with history, any room a guest asks for.
ADVERSARY_ROUTES = '''

ws.keep_history("room:storm-*", size=50)


@ws.room_authorizer
def adversary_rooms(conn, room):
    """The adversary's rooms are open to guests."""
    return room.startswith("storm-")
'''

SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
_POST = "POST /login HTTP/1.1\r\nHost: x\r\n"
SMUGGLING = {
    "CL+TE": _POST + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE+CL": _POST + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "two CL": _POST + "Content-Length: 0\r\nContent-Length: 37\r\n\r\n" + SMUGGLED,
    "chunked, identity": _POST + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE twice": _POST + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "xchunked": _POST + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE space colon": _POST + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "CL +0": _POST + "Content-Length: +0\r\n\r\n" + SMUGGLED,
}
_UPGRADE = (
    "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
MALFORMED = {
    "no Host": "GET / HTTP/1.1\r\n\r\n",
    "two Hosts": "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space colon": "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "obs-fold": "GET / HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n b\r\n\r\n",
    "upgrade+body": _UPGRADE + "Content-Length: 5\r\n\r\nhello",
}
STALLED = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nhello"
CUT_SHORT = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello"
_STATUS = re.compile(rb"(?:^|\r?\n)HTTP/1\.[01] (\d{3}) ")


def make_adversary_project(root: Any) -> Any:
    """The bench project, plus rooms with history for the name storm (DEBUG off)."""
    return make_project(root, extra_wsgi=BENCH_ROUTES + ADVERSARY_ROUTES, debug=False)


# -- the probe beside each attack ---------------------------------------------------


class Probe:
    """Round trips on /echo: some quiet, then in a thread for as long as an attack runs."""

    def __init__(self, server: ServerProcess, timeout: float) -> None:
        """Connect to ``server``'s /echo."""
        self.client = RawClient(server.port, "/echo", server.origin)
        self.timeout = timeout
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def quiet(self, count: int) -> dict:
        """``count`` round trips with nothing else going on."""
        return summary(round_trips(self.client, count, gap=0.005, timeout=self.timeout))

    def start(self) -> None:
        """Probe in a thread until :meth:`stop`."""

        def run() -> None:
            while not self._stop.is_set() and not self.client.eof:
                self.samples += round_trips(self.client, 10, gap=0.01, timeout=self.timeout)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        """Stop probing; the summary of the round trips made during the attack."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout * 12)
        self.client.close(reset=True)
        return summary(self.samples or [math.inf])


def exchange(port: int, raw: bytes, wait: float = 3.0, half_close: bool = False) -> tuple[list[int], str]:
    """Send ``raw``: the statuses of every response, and how the connection ended (closed, open, reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received, ending = b"", "closed"
        try:
            while data := sock.recv(65536):
                received += data
        except TimeoutError:
            ending = "open"
        except ConnectionResetError:
            ending = "reset"
    return [int(status) for status in _STATUS.findall(received)], ending


# -- the attacks --------------------------------------------------------------------


def attack_smuggle(server: ServerProcess, args: Any) -> dict:
    """Every ambiguous framing with a request hidden in its body."""
    results = {name: exchange(server.port, raw.encode("latin-1")) for name, raw in SMUGGLING.items()}
    refused = [n for n, (statuses, end) in results.items() if statuses == [400] and end != "open"]
    served = [n for n, (statuses, _) in results.items() if len(statuses) > 1]
    answer = f"400+close {len(refused)}/{len(results)}"
    if served:
        answer += f"; hidden request served on {len(served)} ({', '.join(served)})"
    details = {n: f"{_statuses(s)} {e}" for n, (s, e) in results.items()}
    return {"answer": answer, "hidden_served": len(served), "details": details}


def attack_malformed(server: ServerProcess, args: Any) -> dict:
    """Malformed heads: the status each gets."""
    results = {name: exchange(server.port, raw.encode("latin-1")) for name, raw in MALFORMED.items()}
    refused = [n for n, (statuses, _) in results.items() if statuses[:1] == [400]]
    others = [f"{n}: {_statuses(s)}" for n, (s, _) in results.items() if n not in refused]
    answer = f"400 {len(refused)}/{len(results)}" + ("; " + ", ".join(others) if others else "")
    return {"answer": answer}


def attack_stalled(server: ServerProcess, args: Any) -> dict:
    """N stalled bodies: closed by the server within the wait? Their RSS cost, and what is left after."""
    clients = []
    try:
        for _ in range(args.stalled):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(STALLED)
            sock.setblocking(False)
            clients.append(sock)
        time.sleep(1.0)
        held = procstat.rss_bytes(server.pid)
        open_socks = {sock.fileno(): sock for sock in clients}
        statuses: dict[str, int] = {}
        deadline = time.monotonic() + args.stall_wait
        with selectors.DefaultSelector() as selector:
            for sock in clients:
                selector.register(sock, selectors.EVENT_READ)
            while open_socks and time.monotonic() < deadline:
                for key, _ in selector.select(0.5):
                    sock = key.fileobj
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    match = _STATUS.search(data)
                    if match:
                        statuses[match[1].decode()] = statuses.get(match[1].decode(), 0) + 1
                    if not data:
                        selector.unregister(sock)
                        del open_socks[sock.fileno()]
        closed = len(clients) - len(open_socks)
        procstat.wait_idle(server.pid, timeout=10)
        after_wait = procstat.rss_bytes(server.pid)
    finally:
        for sock in clients:
            sock.close()
    by_status = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())) or "no answer"
    answer = f"closed {closed}/{len(clients)} within {args.stall_wait:.0f} s ({by_status})"
    return {"answer": answer, "held_rss": held, "after_wait_rss": after_wait}


def attack_cut_short(server: ServerProcess, args: Any) -> dict:
    """Bodies cut short by a half-close: the answers."""
    answers: dict[str, int] = {}
    for _ in range(20):
        statuses, ending = exchange(server.port, CUT_SHORT, half_close=True)
        key = _statuses(statuses) if statuses else f"quiet {ending}"
        answers[key] = answers.get(key, 0) + 1
    return {"answer": ", ".join(f"{k} x{n}" for k, n in answers.items())}


def _v1_guest(server: ServerProcess) -> websocket.WebSocket:
    return websocket.create_connection(
        server.ws_url("/asok/live"), subprotocols=["asok-green.v1"], origin=server.origin, timeout=30
    )


def _drain(client: websocket.WebSocket, stop: threading.Event, frames: list) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            try:
                frames.append(client.recv())
            except Exception:  # noqa: BLE001 - closed, timed out: the reading is over
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _settle(frames: list, quiet: float = 2.0, limit: float = 60.0) -> None:
    """Wait until no frame has come for ``quiet`` seconds (the server has worked through what was sent)."""
    deadline = time.monotonic() + limit
    seen = -1
    while len(frames) != seen and time.monotonic() < deadline:
        seen = len(frames)
        time.sleep(quiet)


def attack_name_storm(server: ServerProcess, args: Any) -> dict:
    """A v1 guest joins and leaves N new rooms with history; RSS after, measured once it has gone."""
    if server.peer.name != "asok_green":
        return {"na": True}
    client = _v1_guest(server)
    stop, frames = threading.Event(), []
    reader = _drain(client, stop, frames)
    try:
        for i in range(args.names):
            client.send(json.dumps({"op": "join_room", "room": f"storm-{i}"}))
            client.send(json.dumps({"op": "leave_room", "room": f"storm-{i}"}))
        _settle(frames)
    finally:
        stop.set()
        client.close()
        reader.join(5)
    return {"answer": f"{args.names:,} rooms joined and left; {len(frames):,} frames back"}


def attack_nested_json(server: ServerProcess, args: Any) -> dict:
    """Receipts nested 965 deep and calls for an unknown component on /asok/live: the answers."""
    if server.peer.name != "asok_green":
        return {"na": True}
    client = _v1_guest(server)
    stop, frames = threading.Event(), []
    reader = _drain(client, stop, frames)
    nested = "[" * 965 + "1" + "]" * 965
    try:
        client.send(json.dumps({"op": "join_room", "room": "storm-nested"}))
        for _ in range(args.nested):
            client.send('{"op": "receipt", "room": "storm-nested", "message_id": ' + nested + "}")
            client.send(json.dumps({"op": "call", "cid": "x"}))
        _settle(frames)
    except OSError:
        pass
    finally:
        stop.set()
        client.close()
        reader.join(5)
    errors = sum(1 for f in frames if isinstance(f, str) and '"error"' in f)
    return {"answer": f"{2 * args.nested:,} sent; {len(frames):,} frames back ({errors:,} error frames)"}


EDGE_ATTACKS = {
    "smuggle": attack_smuggle,
    "malformed": attack_malformed,
    "stalled": attack_stalled,
    "cut_short": attack_cut_short,
    "name_storm": attack_name_storm,
    "nested_json": attack_nested_json,
}


#: Seconds a server may take to hand memory back after an attack (asok_green looks every 5 s).
SETTLE_SECONDS = 12.0


def settled_rss(server: ServerProcess, before: int, seconds: float = SETTLE_SECONDS) -> int:
    """The server's RSS once back within 10% of ``before``, or after ``seconds`` if it does not come back."""
    deadline = time.monotonic() + seconds
    while True:
        rss = procstat.rss_bytes(server.pid)
        if rss <= before * 1.1 or time.monotonic() >= deadline:
            return rss
        time.sleep(0.5)


def run_edge_attack(attack: str, server: ServerProcess, args: Any) -> dict:
    """One attack beside the probe, with the server's RSS before and after."""
    probe = Probe(server, args.probe_timeout)
    quiet = probe.quiet(100 if not args.quick else 30)
    procstat.wait_idle(server.pid, timeout=10)
    before = procstat.rss_bytes(server.pid)
    probe.start()
    try:
        row = EDGE_ATTACKS[attack](server, args)
    finally:
        during = probe.stop()
    procstat.wait_idle(server.pid, timeout=20)
    after = settled_rss(server, before) if server.alive() else before
    return {**row, "quiet": quiet, "during": during, "rss_before": before, "rss_after": after}


# -- the table ----------------------------------------------------------------------


def _statuses(statuses: list[int]) -> str:
    return "+".join(str(s) for s in statuses) or "no answer"


def _p99(row: dict) -> str:
    quiet, during = row["quiet"]["p99_ms"], row["during"]["p99_ms"]
    if math.isinf(during):
        return f"{quiet:.1f} / timeout"
    return f"{quiet:.1f} / {during:.1f} ({during / quiet:.1f}x)" if quiet else "-"


def _memory(row: dict) -> str:
    before, after = row["rss_before"] / MIB, row["rss_after"] / MIB
    text = f"{before:.0f} -> {after:.0f} MiB ({(after - before) / before:+.0%})"
    if "held_rss" in row:
        text += f"; {row['held_rss'] / MIB:.0f} MiB held, {row['after_wait_rss'] / MIB:.0f} after the wait"
    return text


def edge_rows(servers: dict, names: list[str]) -> list[tuple[str, list[str]]]:
    """Rows for every edge attack that ran: answer, tracebacks, probe p99 and memory, one cell per server."""
    table = []
    for attack in EDGE_ATTACKS:
        if not any(attack in servers[n] for n in names):
            continue
        cells: dict[str, list[str]] = {"answer": [], "tracebacks": [], "p99": [], "memory": []}
        for name in names:
            row = servers[name].get(attack)
            if row is None or row.get("na") or "error" in row:
                text = "not run" if row is None else ("n/a" if row.get("na") else row["error"])
                for key in cells:
                    cells[key].append(text if key == "answer" else "-")
                continue
            cells["answer"].append(row["answer"])
            cells["tracebacks"].append(str(row.get("tracebacks", 0)))
            cells["p99"].append(_p99(row))
            cells["memory"].append(_memory(row))
        table += [
            (f"{attack}: answer", cells["answer"]),
            (f"{attack}: tracebacks in the log", cells["tracebacks"]),
            (f"{attack}: probe p99 quiet / during, ms", cells["p99"]),
            (f"{attack}: server RSS before -> after", cells["memory"]),
        ]
    return table
