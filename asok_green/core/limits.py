"""The server's limits: what each one defaults to and where it may be set.

A limit comes from, in order: the ``WebSocketServer(...)`` keyword, the app's
``config``, the environment, then the default below.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: Descriptors the process keeps for itself (listener, logs, database, ...).
_RESERVED_FILES = 64


def open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


@dataclass
class Limits:
    """Per-process bounds; every one has a production default."""

    #: Largest message a client may send, in bytes (close 1009 beyond); each
    #: frame of a fragmented message also counts its header, and a compressed
    #: message is held to it both before and after inflating.
    max_message_size: int = 1 << 20
    #: Bytes queued for one client before it is closed as too slow (1008); each
    #: queued frame counts 64 bytes more than its length, for its bookkeeping.
    max_queue: int = 1 << 20
    #: Open WebSockets per process (503 before the handshake beyond); 0 means
    #: "as many as the open-files limit allows".
    max_connections: int = 0
    #: Seconds to wait for the client's close frame after sending ours.
    close_timeout: float = 5.0
    #: Seconds a closing connection may spend flushing what is queued.
    flush_timeout: float = 5.0
    #: Seconds graceful shutdown waits for clients before dropping them.
    shutdown_timeout: float = 4.0
    #: Seconds over which a process replaced by a restart (SIGHUP) closes its
    #: WebSockets with 1012, in jittered batches, so their clients do not all
    #: reconnect at once; it then waits up to ``shutdown_timeout`` more.
    drain_seconds: float = 10.0
    #: Whether permessage-deflate (RFC 7692) is accepted when a client offers
    #: it; ``WS_COMPRESSION=0`` or ``config["WS_COMPRESSION"] = False`` turns it off.
    compression: bool = True
    #: Bytes of kernel send buffer per WebSocket (SO_SNDBUF); 0 leaves it to the
    #: kernel's autotuning, which can hold several MiB for a client that stopped
    #: reading before anything reaches ``max_queue``.
    send_buffer: int = 0
    #: Seconds a client has to send its complete request line and headers.
    handshake_timeout: float = 10.0
    #: Bytes of request line plus headers a client may send (431 beyond).
    max_header_bytes: int = 16 * 1024
    #: Seconds a request body may go without a byte arriving (408 and close
    #: beyond); also the grace before ``body_min_rate`` applies (0: no deadline).
    body_timeout: float = 20.0
    #: Bytes per second a request body must average once ``body_timeout`` has
    #: passed since it started (408 and close below; 0: no minimum).
    body_min_rate: float = 500.0
    #: Seconds of silence from a client before the server pings it (0: never).
    ping_interval: float = 20.0
    #: Seconds a pinged client has to answer before it is closed (1011).
    ping_timeout: float = 20.0
    #: Seconds between re-checks of logged-in connections' sessions (0: never).
    session_check_interval: float = 30.0
    #: Messages per second one client may send (0: unlimited); over it, close 1008.
    max_messages_per_second: float = 0.0
    #: Messages a client may send in a burst above that rate (0: one second's worth).
    message_burst: int = 0
    #: Lines of one kind about misbehaving clients (protocol errors, slow
    #: consumers, rate limits) logged per ``log_interval``; the rest are counted
    #: and summarised in one line (0: log every one).
    log_burst: int = 10
    #: Seconds of the window ``log_burst`` applies to.
    log_interval: float = 60.0
    #: Rooms one connection may be in at once; joining one more is refused
    #: with an error frame, and the connection stays open (0: no limit).
    max_rooms_per_connection: int = 100
    #: Bytes of stream history held in memory, every stream together (the
    #: tails that answer replays, and the ``memory`` store's messages); past
    #: it, the least recently published streams' are let go first.
    history_memory: int = 16 * 1024 * 1024
    #: Longest JSON message ``/asok/live``'s operators read, in bytes (longer:
    #: an error frame).
    max_op_bytes: int = 256 * 1024
    #: Deepest nesting of arrays and objects in a JSON message ``/asok/live``'s
    #: operators read (deeper: an error frame).
    max_op_depth: int = 32

    @classmethod
    def resolve(
        cls,
        overrides: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Limits:
        """Limits from keyword ``overrides``, then ``config["WS_<NAME>"]``, then ``$WS_<NAME>``."""
        environ = os.environ if environ is None else environ
        config = config or {}
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = "WS_" + field.name.upper()
            for source in (overrides.get(field.name), config.get(key), environ.get(key)):
                if source is not None:
                    values[field.name] = _cast(field.default, source)
                    break
        return cls(**values)

    def connection_cap(self, open_files: int) -> int:
        """The effective connection limit for a process allowed ``open_files`` descriptors."""
        by_files = max(1, open_files - _RESERVED_FILES)
        return min(self.max_connections, by_files) if self.max_connections > 0 else by_files


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _cast(default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, str):
            word = value.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(f"expected a yes/no value, not {value!r}")
            return word in _TRUE
        return bool(value)
    if isinstance(default, float):
        return float(value)
    return int(value)
