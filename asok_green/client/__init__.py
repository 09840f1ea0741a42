"""A Python client of ``asok-green.v1`` that resumes: every message once, in order, across drops and restarts.

    from asok_green.client import ResumingClient, ContinuityLost

    with ResumingClient("ws://127.0.0.1:8000/chat/general") as client:
        for message in client:
            print(message.offset, message.data)

``python -m asok_green.client URL`` tails a stream from a shell. Built on
websocket-client (``pip install 'asok_green[client]'``); works in plain threads
and in gevent's greenlets (see :mod:`asok_green.client.resuming`), and under
asyncio as :class:`AsyncResumingClient` (see :mod:`asok_green.client.aio`).
"""

from __future__ import annotations

from .aio import AsyncResumingClient
from .backoff import Backoff, full_jitter
from .errors import ClientClosed, ContinuityLost, HandshakeFailed
from .positions import Position, StreamPositions, Verdict
from .resuming import FINAL_CODES, SUBPROTOCOL, ResumingClient
from .wire import Message, Notice

__all__ = [
    "ResumingClient",
    "AsyncResumingClient",
    "Message",
    "Notice",
    "ContinuityLost",
    "ClientClosed",
    "HandshakeFailed",
    "Backoff",
    "full_jitter",
    "Position",
    "StreamPositions",
    "Verdict",
    "SUBPROTOCOL",
    "FINAL_CODES",
]
