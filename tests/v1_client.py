"""A client of the ``asok-green.v1`` subprotocol for tests: envelopes, notices and offsets as they arrive."""

from __future__ import annotations

import base64
import json
import time

import websocket

SUBPROTOCOL = "asok-green.v1"


class V1Client:
    """One v1 connection (websocket-client offering ``asok-green.v1``) that decodes every frame as JSON."""

    def __init__(self, ws_url: str, path: str, since: str | None = None, origin: str | None = None):
        url = ws_url + path + (f"?asok_since={since}" if since is not None else "")
        self.ws = websocket.create_connection(
            url, origin=origin or ws_url.replace("ws://", "http://"), subprotocols=[SUBPROTOCOL], timeout=10
        )
        #: Every frame received so far, decoded.
        self.received: list[dict] = []

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server's answer named."""
        return self.ws.getsubprotocol()

    def next(self, timeout: float = 10) -> dict:
        """The next frame, decoded."""
        self.ws.settimeout(timeout)
        opcode, payload = self.ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT, f"v1 frames are text, got opcode {opcode}"
        frame = json.loads(payload)
        self.received.append(frame)
        return frame

    def until(self, predicate, timeout: float = 20) -> list[dict]:
        """Frames received until one satisfies ``predicate`` (included)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            frame = self.next(max(0.1, deadline - time.monotonic()))
            got.append(frame)
            if predicate(frame):
                return got

    def until_offset(self, offset: int, timeout: float = 20) -> list[dict]:
        """Frames received until the stream message of ``offset``."""
        return self.until(lambda f: f.get("o") == offset and "asok" not in f, timeout)

    def notice(self, kind: str, timeout: float = 10) -> dict:
        """The next frame, which must be the notice ``kind``."""
        frame = self.next(timeout)
        assert frame.get("asok") == kind, frame
        return frame

    def send(self, text: str) -> None:
        """Send a text message."""
        self.ws.send(text)

    def close(self) -> None:
        """Close the connection."""
        self.ws.close()


def stream_messages(frames: list[dict]) -> list[dict]:
    """The stream messages among ``frames`` (no notices)."""
    return [f for f in frames if "asok" not in f and "o" in f]


def payload(frame: dict) -> str | bytes:
    """The text or bytes an envelope carries."""
    return base64.b64decode(frame["b"]) if "b" in frame else frame["d"]


def since_of(frame: dict) -> str:
    """``<epoch>:<offset>`` of a stream message or notice, as ``?asok_since=`` takes it."""
    return f"{frame['e']}:{frame['o']}"
