"""A client that pours frames at a server as fast as it can: ``python -m tests.flooder``.

    python -m tests.flooder --port N [--path /count] [--kind text|empty-fragments|ping]

It upgrades, prints ``flooding`` and then sends the same block of frames over
and over, reading nothing, until the server ends the connection (exit 0) or
it is killed. ``text`` frames are 7 bytes each (a masked one-byte message);
``empty-fragments`` is a non-final text frame followed by empty continuation
frames; ``ping`` is empty pings.
"""

from __future__ import annotations

import argparse
import sys

from tests.raw_client import OP_PING, OP_TEXT, RawClient
from tests.server_frames import client_frame

OP_CONT = 0x0
BLOCK = 64 * 1024


def block_of(kind: str) -> bytes:
    """About 64 KiB of frames of ``kind``."""
    if kind == "text":
        frame = client_frame(OP_TEXT, b"x")
    elif kind == "empty-fragments":
        frame = client_frame(OP_CONT, b"", fin=False)
    else:
        frame = client_frame(OP_PING, b"")
    return frame * (BLOCK // len(frame))


def main(argv=None) -> int:
    """Flood until the server hangs up."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/count")
    parser.add_argument("--kind", default="text", choices=["text", "empty-fragments", "ping"])
    args = parser.parse_args(argv)
    client = RawClient(args.port, timeout=None)
    head = client.upgrade(args.path)
    if not head.startswith(b"HTTP/1.1 101"):
        print("refused", flush=True)
        return 2
    if args.kind == "empty-fragments":
        client.send_frame(OP_TEXT, b"a", fin=False)
    block = block_of(args.kind)
    print("flooding", flush=True)
    sent = 0
    try:
        while True:
            client.sock.sendall(block)
            sent += len(block)
    except OSError:
        print(f"ended after {sent} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
