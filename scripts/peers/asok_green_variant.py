"""asok_green with proposed changes applied from outside, to measure what they would change.

    python scripts/peers/asok_green_variant.py --port PORT [--drop rfile,environ,headers,misc] [--nodelay]
                                               [--tracemalloc DIR]

Serves ``wsgi:app`` from the current folder exactly as ``python -m asok_green serve``
does, with these experiments switched on:

``--drop``
    once a connection is upgraded, release parts of gevent-pywsgi's per-request
    state that the handler's greenlet otherwise keeps for the connection's whole
    life: ``rfile`` (the BufferedReader with its 8 KiB buffer, and the
    ``wsgi.input`` wrapper around it), ``environ`` (emptied in place), ``headers``
    (the parsed request header message) and ``misc`` (request line, response
    headers and status).
``--nodelay``
    set TCP_NODELAY on every accepted socket (pywsgi writes a response's headers
    and body in two sends; with Nagle's algorithm the body then waits for the
    client's delayed ACK).
``--idle-watcher [--park-after SECONDS]``
    no greenlet while a connection is idle: after on_connect the handler's
    greenlet ends (and with it everything pywsgi kept for the request); the
    socket's read watcher spawns a greenlet to read and run the handlers when
    data arrives, and takes over again once that greenlet has seen no data for
    SECONDS (default 0: at once).
``--tracemalloc DIR``
    trace allocations (one frame); each SIGUSR1 writes ``DIR/snapshot-N.pickle``.
``--malloc-stats FILE [--trim]``
    each SIGUSR2 appends one JSON line to FILE: RSS, glibc's ``mallinfo2``
    (heap in use and free), pymalloc's arenas and blocks, and the greenlets
    alive; with ``--trim`` it then calls ``malloc_trim(0)`` and adds the RSS after.

The asok_green package is not modified: the experiments wrap
``asok_green.server.upgrade.serve_connection`` and ``GreenServer.handle``, and the
idle watcher drives a ``Connection`` through its own (private) parts.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import ctypes  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tracemalloc  # noqa: E402
from time import monotonic  # noqa: E402

import gevent  # noqa: E402
from gevent.timeout import Timeout  # noqa: E402

from asok_green.protocol.frames import (  # noqa: E402
    CLOSE_ABNORMAL,
    OP_PONG,
    Close,
    Message,
    Ping,
    ProtocolError,
    encode_frame,
)
from asok_green.server.connection import CLOSED, OPEN  # noqa: E402

DROPS = ("rfile", "environ", "headers", "misc")

_CLOSED_FILE = io.BytesIO()
_CLOSED_FILE.close()


def trim_handler(handler, drops: set[str]) -> None:
    """Release the parts of ``handler`` (a pywsgi handler) named in ``drops``."""
    environ = handler.environ
    if "rfile" in drops:
        handler.rfile = _CLOSED_FILE  # pywsgi checks rfile.closed when the connection ends
        handler.__dict__.pop("wsgi_input", None)
        environ["wsgi.input"] = None
    if "environ" in drops:
        environ.clear()
    if "headers" in drops:
        handler.__dict__.pop("headers", None)  # the class attribute (an empty message) remains
    if "misc" in drops:
        for name in ("requestline", "response_headers", "status", "command", "path", "request_version"):
            handler.__dict__.pop(name, None)


def install_drops(drops: set[str]) -> None:
    """Trim the handler just before the connection's read loop starts."""
    from asok_green.server import upgrade as server

    original = server.serve_connection

    def serve_connection(hub, conn, route):
        handler = sys._getframe(1).f_locals.get("self")
        if handler is not None:
            trim_handler(handler, drops)
        del handler
        return original(hub, conn, route)

    server.serve_connection = serve_connection


class Parked:
    """A connection served by an io watcher while idle and by a short-lived greenlet while busy.

    ``park_after``: seconds the greenlet keeps waiting for more data (a busy
    client keeps its greenlet) before it ends and the watcher takes over; 0
    parks at once.
    """

    def __init__(self, hub, conn, route, sock, park_after: float = 0.0):
        self.hub, self.conn, self.route, self.sock = hub, conn, route, sock
        self.raw = sock._sock
        self.watcher = sock._read_event  # the socket's own read watcher: idle in this design
        self.park_after = park_after

    def start(self, leftover: bytes) -> None:
        """Serve ``leftover`` first if the client sent data behind its handshake, else wait."""
        if leftover:
            gevent.spawn(self.serve, leftover)
        else:
            self.watcher.start(self.readable)

    def readable(self) -> None:
        """Runs in the hub: read what is there, hand it to a greenlet, stop watching meanwhile."""
        try:
            data = self.raw.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.watcher.stop()
        gevent.spawn(self.serve, data)

    def serve(self, data: bytes) -> None:
        """Handle ``data``, and whatever follows within ``park_after``; then park (or end)."""
        while self.handle(data):
            data = self.linger()
            if data is None:
                self.watcher.start(self.readable)
                return

    def linger(self) -> bytes | None:
        """The next data if it comes within ``park_after`` seconds, else None."""
        if self.park_after <= 0:
            return None
        timer = Timeout._start_new_or_dummy(self.park_after)
        try:
            gevent.get_hub().wait(self.watcher)
        except Timeout as exc:
            if exc is not timer:
                raise
            return None
        finally:
            timer.close()
        try:
            return self.raw.recv(65536)
        except BlockingIOError:
            return self.linger()
        except OSError:
            return b""

    def handle(self, data: bytes) -> bool:
        """What one pass of ``Connection.run``'s loop does with ``data``; False once the connection ended."""
        conn = self.conn
        if not data or conn.state is CLOSED:
            self.end()
            return False
        conn.last_seen = monotonic()
        try:
            events, error = conn._parser().feed(data), None
        except ProtocolError as exc:
            events, error = exc.events, exc
        for event in events:
            if type(event) is Message:
                if conn.state is OPEN and self.route.on_message is not None:
                    payload = conn._inflate(event) if event.compressed else event.data
                    conn._dispatch(self.route.on_message, payload)
            elif type(event) is Ping:
                if conn.state is OPEN:
                    conn._enqueue(encode_frame(OP_PONG, event.payload))
            elif type(event) is Close:
                conn._peer_closed(event)
                self.end()
                return False
        if error is not None:
            conn.close(error.code, error.reason)
            self.end()
            return False
        return True

    def end(self) -> None:
        """What ``serve_connection`` does after the read loop, then close the socket."""
        from asok_green.server.lifecycle import call_handler

        conn = self.conn
        self.watcher.stop()
        if conn.state is OPEN:
            conn.state, conn.close_code = CLOSED, CLOSE_ABNORMAL
        self.hub.unregister(conn)
        if self.route.on_disconnect is not None:
            call_handler(self.route.on_disconnect, conn, "disconnect")
        conn.finish(self.hub.limits.flush_timeout)
        self.sock.close()


def install_idle_watcher(park_after: float = 0.0) -> None:
    """Serve connections through :class:`Parked` instead of a greenlet blocked in ``recv``."""
    from asok_green.server import upgrade
    from asok_green.server.green_server import GreenServer
    from asok_green.server.lifecycle import call_handler

    parked: set[int] = set()
    do_close = GreenServer.do_close

    def keep_parked_open(self, sock, *args):
        if id(sock) in parked:
            parked.discard(id(sock))  # the connection lives on; Parked.end closes it
            return
        do_close(self, sock, *args)

    def serve_connection(hub, conn, route):
        handler = sys._getframe(1).f_locals.get("self")
        hub.register(conn)
        if route.on_connect is not None:
            call_handler(route.on_connect, conn, "connect")
        # When this greenlet ends, pywsgi must neither read from the socket nor close it.
        parked.add(id(conn._sock))
        handler.socket = None
        handler.close_connection = True
        leftover, conn._leftover = conn._leftover, b""
        Parked(hub, conn, route, conn._sock, park_after).start(leftover)

    GreenServer.do_close = keep_parked_open
    upgrade.serve_connection = serve_connection


def install_nodelay() -> None:
    """TCP_NODELAY on every accepted connection."""
    from asok_green.server.green_server import GreenServer

    original = GreenServer.handle

    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return original(self, sock, address)

    GreenServer.handle = handle


def install_snapshots(folder: str) -> None:
    """SIGUSR1 writes a tracemalloc snapshot to ``folder/snapshot-N.pickle``."""
    os.makedirs(folder, exist_ok=True)
    taken = [0]

    def snapshot():
        path = os.path.join(folder, f"snapshot-{taken[0]}.pickle")
        taken[0] += 1
        tracemalloc.take_snapshot().dump(path + ".part")
        os.replace(path + ".part", path)

    gevent.signal_handler(signal.SIGUSR1, snapshot)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _pymalloc_stats() -> dict:
    """Arenas and block bytes from ``sys._debugmallocstats`` (it writes to the C stderr)."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    wanted = {
        "# arenas allocated current": "arenas",
        "# bytes in allocated blocks": "allocated_blocks",
        "# bytes in available blocks": "available_blocks",
        "# bytes lost to pool headers": "pool_headers",
        "# bytes lost to quantization": "quantization",
        "Total": "total",
    }
    found = {}
    for line in text.splitlines():
        key, _, value = line.rpartition("=")
        key = key.strip()
        if key in wanted:
            found[wanted[key]] = int(value.strip().replace(",", ""))
    return found


def install_malloc_stats(path: str, trim: bool) -> None:
    """SIGUSR2 appends a JSON line of allocator figures to ``path`` (see the module docstring)."""
    import gc
    import json

    import greenlet

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc_trim.argtypes = [ctypes.c_size_t]

    def stats():
        info = libc.mallinfo2()
        line = {"rss": _rss(), **{name: getattr(info, name) for name, _ in _MallInfo2._fields_}}
        line["pymalloc"] = _pymalloc_stats()
        line["greenlets"] = sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet))
        if trim:
            libc.malloc_trim(0)
            line["rss_after_trim"] = _rss()
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")

    gevent.signal_handler(signal.SIGUSR2, stats)


def main() -> None:
    """Apply the experiments, then serve like ``python -m asok_green serve``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", default="wsgi:app")
    parser.add_argument("--drop", default="", help=f"comma-separated, of: {','.join(DROPS)}")
    parser.add_argument("--nodelay", action="store_true")
    parser.add_argument("--idle-watcher", action="store_true")
    parser.add_argument("--park-after", type=float, default=0.0, help="with --idle-watcher: seconds of linger")
    parser.add_argument("--tracemalloc", metavar="DIR")
    parser.add_argument("--malloc-stats", metavar="FILE")
    parser.add_argument("--trim", action="store_true", help="with --malloc-stats: malloc_trim(0) after each")
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start(1)
        install_snapshots(args.tracemalloc)
    if args.malloc_stats:
        install_malloc_stats(args.malloc_stats, args.trim)

    from asok_green.api.serving import serve
    from asok_green.api.websocket_server import WebSocketServer
    from asok_green.bridge import bootstrap
    from asok_green.process.logs import configure_logging

    configure_logging("info")
    bootstrap.require_monkey_patched()
    bootstrap.install_dropin(WebSocketServer)
    app = bootstrap.load_app(args.app)
    drops = {d for d in args.drop.split(",") if d}
    unknown = drops - set(DROPS)
    if unknown:
        parser.error(f"unknown --drop: {sorted(unknown)}")
    if drops:
        install_drops(drops)
    if args.nodelay:
        install_nodelay()
    if args.idle_watcher:
        install_idle_watcher(args.park_after)
    serve(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
