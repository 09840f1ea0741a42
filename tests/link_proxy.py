"""A TCP proxy on loopback whose links a test can cut, as a network drop would.

    proxy = LinkProxy(server.port)      # listens on 127.0.0.1:proxy.port
    page.goto(f"http://127.0.0.1:{proxy.port}/")
    proxy.cut()                         # every open link is closed at once (both sides)
    proxy.hold()                        # ... and new ones are closed as they arrive
    proxy.release()                     # new links reach the server again
    proxy.close()

Each accepted connection is forwarded to the server by two threads (one per
direction). The pytest process is not monkey-patched: these are OS threads.
"""

from __future__ import annotations

import socket
import threading

_CHUNK = 65536


class LinkProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``; ``cut`` drops every link."""

    def __init__(self, target_port: int) -> None:
        """Listen on a free port and start accepting."""
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._held = False
        self._closed = False
        self.accepted = 0
        self.refused = 0
        threading.Thread(target=self._accept_loop, name="link-proxy", daemon=True).start()

    def cut(self) -> int:
        """Close every open link, both ends; return how many sockets were closed."""
        with self._lock:
            links, self._links = self._links, set()
        for sock in links:
            _drop(sock)
        return len(links)

    def hold(self) -> None:
        """Cut every link and close new ones as they come, until ``release``."""
        with self._lock:
            self._held = True
        self.cut()

    def release(self) -> None:
        """Let new links through again."""
        with self._lock:
            self._held = False

    def close(self) -> None:
        """Stop listening and cut every link."""
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                held = self._held
            if held:
                self.refused += 1
                _drop(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _drop(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._links.update((client, upstream))
            self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._links.discard(source)
            self._links.discard(sink)
        _drop(source)
        _drop(sink)


def _drop(sock: socket.socket) -> None:
    """Shut a socket down both ways (waking a thread blocked in recv on it) and close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
