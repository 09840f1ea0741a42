"""A restart's two generations as one server while both run: the node of the local channel.

During a SIGHUP restart the old process drains while the new one already
serves. Each of them is then a :class:`LocalNode`: the old one listens on a
Unix socket in a private directory (asok_green.process.restart_link names it),
the new one connects to it before it says that it serves, and over that link
they exchange what a Redis cluster would carry (asok_green.cluster.redis_node):

* broadcasts: the hub delivers to its own clients, then :meth:`LocalNode.publish`
  queues the message for the peer, which delivers it to its own. A message that
  was delivered with an offset (a stream with history) carries it; when both
  keep their history in the same file (the SQLite store), the peer delivers it
  with that offset (``hub.deliver_stream``), so a v1 client on either side gets
  every message once, in order. Otherwise the peer delivers it as a broadcast
  of its own (its store gives the offset).
* presence: each side says what it holds when the link opens (``hello``) and
  every change after, so users and rooms are cluster-wide while both run;
  when the link closes (the old process exits) its users go, as a node that
  is down does.

Nothing here yields while the hub calls it: :meth:`publish` and
:meth:`local_changes` only append to each link's bounded queue. Each link's
socket I/O happens in its own two greenlets; a peer that stops reading for
``SEND_TIMEOUT`` seconds, or lets its queue fill, is cut off, and never
blocks the server. A message from the peer is never passed on again, so two
links never echo.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket
from gevent.event import Event

from ..core import state
from ..protocol.frames import OP_BINARY, OP_TEXT
from ..protocol.outgoing import Outgoing
from . import local_wire as wire

if TYPE_CHECKING:
    from ..server.hub import Hub

logger = logging.getLogger("asok_green.cluster")

#: Items queued for a peer at most; past it the peer is too slow and is cut off.
MAX_OUTBOX = 10_000
#: Payload bytes queued for a peer at most.
MAX_OUTBOX_BYTES = 64 * 1024 * 1024
#: Seconds a peer has to take one batch before it counts as gone.
SEND_TIMEOUT = 5.0
#: Seconds a new process waits to reach the old one.
CONNECT_TIMEOUT = 2.0
#: Seconds :meth:`LocalNode.stop` gives each link to send what is queued.
STOP_TIMEOUT = 1.0
#: Bytes read at once, and most bytes written in one batch.
_CHUNK = 64 * 1024
_BATCH_BYTES = 1024 * 1024
#: What a queued broadcast costs beyond its payload (its header).
_ITEM_COST = 64


class PeerStalled(Exception):
    """The peer has not taken a batch within ``SEND_TIMEOUT`` seconds."""


class Link:
    """The channel to one peer: a bounded queue, a writer and a reader greenlet."""

    def __init__(self, node: LocalNode, sock: Any, label: str):
        """A link over the connected Unix socket ``sock``; nothing runs before :meth:`start`."""
        self.node = node
        self.sock = sock
        self.label = label
        #: The peer's node id, known from its hello (None until then).
        self.peer_id: str | None = None
        #: True when the peer keeps its history in the same store: its offsets are ours.
        self.shares_store = False
        self.closed = False
        #: True once the peer's queue overflowed: nothing more is queued, the link is closing.
        self.cut_off = False
        self._outbox: deque = deque()
        self._queued_bytes = 0
        self._wake = Event()
        self._writer: gevent.Greenlet | None = None
        self._reader: gevent.Greenlet | None = None

    @property
    def backlog(self) -> int:
        """Items queued for the peer and not written yet."""
        return len(self._outbox)

    def start(self) -> None:
        """Start reading and writing."""
        self._writer = gevent.spawn(self._run_writer)
        self._reader = gevent.spawn(self._run_reader)

    def queue(self, item: Any, size: int) -> None:
        """Queue ``item`` (a frame, or a broadcast to encode) for the peer; never yields.

        A peer whose queue is full is cut off: it is not keeping up, and the
        two processes go on as two servers rather than one waiting for the other.
        """
        if self.closed or self.cut_off:
            return
        if len(self._outbox) >= MAX_OUTBOX or self._queued_bytes + size > MAX_OUTBOX_BYTES:
            self.node.hub.stats["cluster_dropped"] += 1
            # Closed from a greenlet of its own: the hub is in the middle of a broadcast or an announcement.
            self.cut_off = True
            self._outbox.clear()
            self._queued_bytes = 0
            gevent.spawn(self.close, "it does not keep up (its queue is full)", False)
            return
        self._outbox.append((item, size))
        self._queued_bytes += size
        self._wake.set()

    def finish(self, timeout: float) -> None:
        """Send what is queued (``timeout`` seconds at most), then close."""
        if not self.closed and self._writer is not None:
            self._outbox.append((None, 0))  # the writer's last item: shut the socket's write side
            self._wake.set()
            self._writer.join(timeout)
        self.close()

    def close(self, reason: str = "", expected: bool = True) -> None:
        """Stop both greenlets (but the caller's) and the socket; the node forgets the peer.

        ``reason`` says why, in the log (a warning unless ``expected``).
        """
        if self.closed:
            return
        self.closed = True
        current = gevent.getcurrent()
        for greenlet in (self._writer, self._reader):
            if greenlet is not None and greenlet is not current:
                greenlet.kill(block=False)
        try:
            self.sock.close()
        except OSError:
            pass
        self._outbox.clear()
        self.node.link_closed(self, reason, expected)

    def _run_writer(self) -> None:
        outbox = self._outbox
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                while outbox:
                    chunk, last = self._take_batch()
                    if chunk:
                        with gevent.Timeout(SEND_TIMEOUT, PeerStalled):
                            self.sock.sendall(chunk)
                    if last:
                        self.sock.shutdown(socket.SHUT_WR)
                        return
        except (OSError, PeerStalled) as exc:
            self.close(f"it stopped reading ({exc.__class__.__name__})", expected=False)

    def _take_batch(self) -> tuple[bytes, bool]:
        """Encode queued items, up to ``_BATCH_BYTES``; True with them if the last item (stop) was reached."""
        outbox = self._outbox
        parts = []
        size = 0
        while outbox and size < _BATCH_BYTES:
            item, cost = outbox.popleft()
            self._queued_bytes -= cost
            if item is None:
                return b"".join(parts), True
            frame = item if isinstance(item, bytes) else _encode_broadcast(*item)
            parts.append(frame)
            size += len(frame)
        return b"".join(parts), False

    def _run_reader(self) -> None:
        reader = wire.FrameReader()
        reason, expected = "it closed the link", True
        try:
            while True:
                data = self.sock.recv(_CHUNK)
                if not data:
                    break
                for header, payload in reader.feed(data):
                    self._apply(header, payload)
                # recv does not yield while data waits: let the other greenlets run between chunks.
                gevent.idle()
        except wire.BadFrame as exc:
            reason, expected = f"it sent a bad frame ({exc})", False
        except OSError as exc:
            reason, expected = f"the link failed ({exc})", False
        finally:
            self.close(reason, expected)

    def _apply(self, header: dict, payload: bytes) -> None:
        try:
            self.node.received(self, header, payload)  # may yield (a replay read from the store)
        except wire.BadFrame:
            raise
        except Exception:
            # One frame the hub fails on (a handler, the store) must not end the link.
            logger.exception("restart channel: a %r frame from %s was not applied", header["k"], self.label)


def _encode_broadcast(target: str, name: str, message: Outgoing) -> bytes:
    """The frame of a broadcast, with its offset if it was delivered with one (read now: it is set by then)."""
    stream = wire.stream_of(message.stream_prefix, message.offset)
    return wire.broadcast(target, name, message.opcode, message.payload, stream)


class LocalNode:
    """One process of a restart, linked to the other over a local channel (see the module's docstring).

    ``listen_path``: where this process waits for its successor (None: it
    does not). :meth:`connect` links it to its predecessor.
    """

    #: Not a Redis cluster: the hub's history stays with its own store, and the metrics' Redis view is off.
    distributed = False

    def __init__(self, hub: Hub, listen_path: str | None = None):
        """A node of ``hub``; nothing listens or connects before :meth:`start` and :meth:`connect`."""
        self.hub = hub
        self.node_id = uuid.uuid4().hex
        self.listen_path = listen_path
        #: The open links, at most one per peer (a restart has two generations).
        self.links: list[Link] = []
        self._listener: Any = None
        self._acceptor: gevent.Greenlet | None = None
        self._stopped = False

    @property
    def backlog(self) -> int:
        """Broadcasts and changes queued for the other process and not written yet."""
        return sum(link.backlog for link in self.links)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Listen on ``listen_path`` (if any) for the process that will replace this one."""
        path = self.listen_path
        if path is None:
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(4)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._acceptor = gevent.spawn(self._run_acceptor)

    def connect(self, path: str, timeout: float = CONNECT_TIMEOUT) -> bool:
        """Link to the process listening on ``path`` (the one this one replaces); False if it cannot be reached."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            logger.info("the process this one replaces is not reachable at %s (%s): not linked", path, exc)
            return False
        if self._stopped:
            sock.close()
            return False
        self.open_link(sock, path)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop listening, send each peer what is queued (bounded), close the links."""
        if self._stopped:
            return
        self._stopped = True
        if self._acceptor is not None:
            self._acceptor.kill(block=False)
        if self._listener is not None:
            self._listener.close()
            try:
                os.unlink(self.listen_path)
            except OSError:
                pass
        for link in list(self.links):
            link.finish(timeout)

    def _run_acceptor(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._stopped:
                    return
                logger.exception("restart channel: accepting failed")
                gevent.sleep(0.1)
                continue
            self.open_link(sock, "the new process")

    def open_link(self, sock: Any, label: str) -> None:
        """Start a link on ``sock``: its first frame says everything this node holds.

        The snapshot is read and queued, and the link added, with no yield in
        between: every change made after it is queued after it.
        """
        link = Link(self, sock, label)
        state_ = self.hub.state
        link.queue(wire.hello(self.node_id, self.store_identity(), state_.held_users(), state_.held_room_users()), 0)
        self.links.append(link)
        link.start()

    def store_identity(self) -> str | None:
        """Where the hub's history is kept, as a process of this machine names it: a file, or None."""
        history = self.hub.history
        if history is None:
            return None
        path = getattr(history.store, "path", None)
        return os.path.realpath(path) if isinstance(path, str) else None

    # -- what the hub calls (never yields) -----------------------------------------

    def publish(self, target: str, name: str, message: Outgoing) -> None:
        """Queue a broadcast, already delivered here, for the peer (``target``: as :meth:`Node.publish`)."""
        for link in self.links:
            link.queue((target, name, message), len(message.payload) + _ITEM_COST)

    def local_changes(self, changes: list[Any]) -> None:
        """Queue the changes of what this process holds (users, users in rooms) for the peer."""
        if not self.links:
            return
        added, removed, joined, left = [], [], [], []
        for change in changes:
            kind = type(change)
            if kind is state.LocalUserAdded:
                added.append(change.user_id)
            elif kind is state.LocalUserRemoved:
                removed.append(change.user_id)
            elif kind is state.LocalRoomUserAdded:
                joined.append((change.room, change.user_id))
            elif kind is state.LocalRoomUserRemoved:
                left.append((change.room, change.user_id))
        # Users before their rooms when they come, rooms before users when they go, as the hub says them.
        frames = [
            wire.holding(kind, items)
            for kind, items in (("add", added), ("join", joined), ("leave", left), ("remove", removed))
            if items
        ]
        for link in self.links:
            for frame in frames:
                link.queue(frame, len(frame))

    # -- what the peer says --------------------------------------------------------

    def link_closed(self, link: Link, reason: str, expected: bool) -> None:
        """``link`` is closed: forget it, and the peer's users and rooms with it."""
        if link in self.links:
            self.links.remove(link)
        level = logging.INFO if expected or self._stopped else logging.WARNING
        logger.log(level, "restart channel: link with %s closed%s", link.label, f": {reason}" if reason else "")
        if link.peer_id is not None:
            self.hub.node_down(link.peer_id)

    def received(self, link: Link, header: dict, payload: bytes) -> None:
        """Apply one frame from ``link``'s peer (may yield: a stream delivery can read the store)."""
        kind = header["k"]
        hub = self.hub
        peer = link.peer_id
        if peer is None:
            if kind != "hello" or not isinstance(header.get("id"), str):
                raise wire.BadFrame("the first frame is not a hello")
            link.peer_id = peer = header["id"]
            mine = self.store_identity()
            link.shares_store = mine is not None and header.get("store") == mine
            logger.info(
                "restart channel: linked with %s (node %s)",
                link.label,
                peer,
                extra={"event": "restart_linked", "node": self.node_id, "peer": peer},
            )
            hub.node_synced(peer, wire.user_ids(header.get("users")), wire.room_users(header.get("rooms")))
        elif kind == "msg":
            self._deliver(link, header, payload)
        elif kind == "add":
            hub.node_added(peer, users=wire.user_ids(header.get("users")))
        elif kind == "remove":
            hub.node_removed(peer, users=wire.user_ids(header.get("users")))
        elif kind == "join":
            hub.node_added(peer, room_users=wire.room_users(header.get("rooms")))
        elif kind == "leave":
            hub.node_removed(peer, room_users=wire.room_users(header.get("rooms")))

    def _deliver(self, link: Link, header: dict, payload: bytes) -> None:
        target, name, opcode = header.get("t"), header.get("n"), header.get("op")
        if not isinstance(name, str) or target not in ("path", "room", "signal") or opcode not in (OP_TEXT, OP_BINARY):
            return
        hub = self.hub
        hub.stats["cluster_received"] += 1
        if target == "signal":
            hub.signal_room(name, Outgoing(opcode, payload), from_node=True)
            return
        stream, epoch, offset = header.get("s"), header.get("e"), header.get("o")
        if link.shares_store and isinstance(stream, str) and isinstance(epoch, str) and type(offset) is int:
            # The same file gave the offset: delivered with it, after any message of the stream missing here.
            hub.deliver_stream(stream, epoch, offset, opcode, payload)
            return
        if opcode == OP_TEXT:
            try:
                message: str | bytes = payload.decode("utf-8")
            except UnicodeDecodeError:
                return
        else:
            message = payload
        if target == "path":
            hub.broadcast(name, message, from_adapter=True)
        else:
            hub.broadcast_to(name, message, from_adapter=True)
