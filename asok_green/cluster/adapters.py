"""Asok's own cluster adapters: ``WebSocketServer(adapter=MyAdapter())`` with any ``BaseWebSocketAdapter``.

Asok's adapter interface is small: ``bind(server)`` once, ``publish(channel,
message)`` for every broadcast the server makes (``channel`` is
``"path:<path>"`` or ``"room:<room>"``, ``message`` the ``str`` or ``bytes``
broadcast), ``close()`` at the end; what the adapter receives from elsewhere it
hands back with ``server.broadcast(path, msg, from_adapter=True)`` or
``server.broadcast_to(room, msg, from_adapter=True)``, which deliver to this
process' clients without publishing again.

:class:`AdapterNode` drives such an adapter as the hub's node (asok_green.core.node):

* ``publish`` never yields: the hub only queues the broadcast, and one
  publisher greenlet calls ``adapter.publish`` for each, in order. An adapter
  that raises is logged once per outage and the next broadcast is tried.
* The adapter is bound to an :class:`AdapterPort`, the hub as an adapter sees
  it: ``broadcast`` and ``broadcast_to`` called from another OS thread (an
  adapter's own native thread) are handed to the loop's thread.
* Presence stays per process, as under Asok's threaded server with an
  adapter: Asok's adapters carry broadcasts only.

Asok's ``RedisWebSocketAdapter`` is not driven here: its settings start
asok_green's Redis cluster (asok_green.cluster.redis_node), which speaks the same channels
and also shares presence. An ``InMemoryWebSocketAdapter`` is the single process.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.monkey import get_original

from ..core import framework
from ..core.outage import Outage
from ..protocol.frames import OP_TEXT
from .outbox import channel_target

if TYPE_CHECKING:
    from ..protocol.outgoing import Outgoing
    from ..server.hub import Hub

logger = logging.getLogger("asok_green.adapter")

#: Broadcasts queued for the adapter at most; past it they are counted and dropped.
MAX_OUTBOX = 10_000

#: Seconds :meth:`AdapterNode.stop` gives the adapter to take what is queued.
STOP_TIMEOUT = 1.0

_native_thread_id = get_original("_thread", "get_ident")


class AdapterRefused(ValueError):
    """``adapter=`` is not an adapter: a message for the person who started the server."""


def is_custom_adapter(adapter: Any) -> bool:
    """True for an adapter object this module drives: neither a name nor one of Asok's own two.

    Raises :class:`AdapterRefused` for an object that has no ``publish`` method,
    or keeps ``BaseWebSocketAdapter``'s, which only raises NotImplementedError.
    Which adapters are Asok's is the framework's answer (asok_green.core.framework).
    """
    if adapter is None or isinstance(adapter, str):
        return False
    if getattr(adapter, "redis_url", None):
        return False  # Asok's Redis adapter (or one like it): asok_green's Redis cluster serves it
    answers = framework.current()
    if not callable(getattr(adapter, "publish", None)) or answers.adapter_cannot_publish(adapter):
        raise AdapterRefused(
            f"WebSocketServer(adapter=...) got a {type(adapter).__module__}.{type(adapter).__qualname__}, "
            "which is not a WebSocket adapter: pass an asok.ws.adapter.BaseWebSocketAdapter "
            "that implements publish(channel, message), 'redis', a redis:// URL, or nothing"
        )
    return not answers.adapter_publishes_nothing(adapter)


def channel_message(message: Outgoing) -> str | bytes:
    """What Asok's server hands ``adapter.publish``: the text as ``str``, a binary message as ``bytes``."""
    if message.opcode == OP_TEXT:
        return message.payload.decode("utf-8")
    return message.payload


class AdapterPort:
    """The hub as an Asok adapter sees it (``adapter.server``).

    ``broadcast`` and ``broadcast_to`` run in the loop's thread: at once when
    called there (from a greenlet), handed to the loop otherwise. Every other
    attribute is the hub's.
    """

    def __init__(self, hub: Hub) -> None:
        """A port onto ``hub``; made in the loop's thread."""
        self._hub = hub
        self._loop_thread = _native_thread_id()
        self._loop = gevent.get_hub().loop

    def broadcast(self, path: str, message: str | bytes, exclude: Any = None, from_adapter: bool = False) -> Any:
        """The hub's ``broadcast``, in the loop's thread (None when handed over from another thread)."""
        return self._on_loop(self._hub.broadcast, path, message, exclude, from_adapter)

    def broadcast_to(self, room: str, message: str | bytes, exclude: Any = None, from_adapter: bool = False) -> Any:
        """The hub's ``broadcast_to``, in the loop's thread (None when handed over from another thread)."""
        return self._on_loop(self._hub.broadcast_to, room, message, exclude, from_adapter)

    def _on_loop(self, send: Any, name: str, message: Any, exclude: Any, from_adapter: bool) -> Any:
        if _native_thread_id() == self._loop_thread:
            return send(name, message, exclude, from_adapter)
        self._loop.run_callback_threadsafe(functools.partial(send, name, message, exclude, from_adapter))
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hub, name)


class AdapterNode:
    """The hub's node when its broadcasts go through an Asok adapter (see the module's docstring)."""

    #: Presence is not shared through Asok's adapters: this node is on its own for it.
    distributed = False
    node_id = None

    def __init__(self, hub: Hub, adapter: Any) -> None:
        """Prepare to drive ``adapter`` for ``hub``; nothing is bound before :meth:`start`."""
        self.hub = hub
        self.adapter = adapter
        self._outbox: deque = deque()
        self._wake = Event()
        self._publisher: gevent.Greenlet | None = None
        self._stopped = False
        name = type(adapter).__qualname__
        self._outage = Outage(f"WebSocket adapter {name}", logger, "broadcasts reach this process' clients only")

    def start(self) -> None:
        """Bind the adapter to the hub (as Asok does) and start publishing."""
        self.adapter.bind(AdapterPort(self.hub))
        self._publisher = gevent.spawn(self._run_publisher)
        logger.info("broadcasts go through the WebSocket adapter %s", type(self.adapter).__qualname__)

    @property
    def backlog(self) -> int:
        """Broadcasts queued for ``adapter.publish`` and not handed to it yet."""
        return len(self._outbox)

    # -- what the hub calls (never yields) -----------------------------------------

    def publish(self, target: str, name: str, message: Outgoing) -> None:
        """Queue a broadcast, already delivered here, for ``adapter.publish``."""
        if self._stopped or len(self._outbox) >= MAX_OUTBOX:
            self.hub.stats["adapter_dropped"] += 1
            return
        # Asok's adapters know paths and rooms: a signal goes as a room broadcast.
        self._outbox.append((f"{channel_target(target)}:{name}", message))
        self._wake.set()

    def local_changes(self, changes: list[Any]) -> None:
        """Nothing to pass on: Asok's adapters carry no presence."""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Let the adapter take what is queued (``timeout`` seconds at most), then close it."""
        if self._stopped:
            return
        self._stopped = True
        publisher = self._publisher
        if publisher is not None:
            self._wake.set()
            publisher.join(timeout)
            publisher.kill(block=True, timeout=timeout)
        try:
            self.adapter.close()
        except Exception:
            logger.exception("closing the WebSocket adapter %s failed", type(self.adapter).__qualname__)

    # -- the publisher greenlet ------------------------------------------------------

    def _run_publisher(self) -> None:
        """The one caller of ``adapter.publish``: drains the queue whenever woken, until stopped."""
        while True:
            self._flush()
            if self._stopped:
                return
            self._wake.wait()
            self._wake.clear()

    def _flush(self) -> None:
        """Call ``adapter.publish`` for each queued broadcast, in order; it may yield."""
        outbox = self._outbox
        while outbox:
            channel, message = outbox.popleft()
            try:
                self.adapter.publish(channel, channel_message(message))
            except Exception as exc:
                self.hub.stats["adapter_failed"] += 1
                self._outage.failed(exc, traceback=True)
            else:
                self.hub.stats["adapter_published"] += 1
                self._outage.answered()


def join(hub: Hub) -> AdapterNode | None:
    """A started :class:`AdapterNode` for ``hub`` if its ``adapter=`` is one to drive, else None."""
    if not is_custom_adapter(hub.adapter):
        return None
    node = AdapterNode(hub, hub.adapter)
    node.start()
    return node
