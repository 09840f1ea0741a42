"""``python -m asok_green.client URL``: tail a stream from a shell, resuming across drops and restarts.

    python -m asok_green.client ws://127.0.0.1:8000/chat/general
    python -m asok_green.client ws://127.0.0.1:8000/asok/live --join general --json
    python -m asok_green.client ws://host/feed --state feed.json     # the next run goes on where this one left

Each message is one line on stdout (binary ones in base64, after ``b64:``;
with ``--json``, the stream, epoch, offset and data as one JSON object).
Reconnects, replays and lost continuity are told on stderr. Exit status: 0
when the server closes the stream for good or ``--count`` messages arrived,
2 when the server refuses the WebSocket, 3 when ``--timeout`` passes without a
message, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import sys
from typing import Any

from .errors import ClientClosed, ContinuityLost, HandshakeFailed
from .resuming import ResumingClient
from .wire import Message


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m asok_green.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="ws:// or wss:// URL of the stream's path")
    parser.add_argument("--cookie", action="append", default=[], help="NAME=VALUE sent with every handshake")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' sent with every handshake")
    parser.add_argument("--origin", help="the Origin header (default: the URL's own site)")
    parser.add_argument("--join", action="append", default=[], metavar="ROOM", help="join ROOM (on /asok/live)")
    parser.add_argument("--state", type=pathlib.Path, help="JSON file of positions: read at start, written at exit")
    parser.add_argument("--json", action="store_true", help="print each message as JSON with its position")
    parser.add_argument("--count", type=int, help="exit after this many messages")
    parser.add_argument("--timeout", type=float, help="exit with status 3 after this many seconds without a message")
    return parser.parse_args(argv)


def format_message(message: Message, as_json: bool) -> str:
    """One line for ``message``."""
    binary = isinstance(message.data, bytes)
    if as_json:
        line: dict[str, Any] = {"s": message.stream, "e": message.epoch, "o": message.offset}
        line["b" if binary else "d"] = base64.b64encode(message.data).decode() if binary else message.data
        return json.dumps(line, ensure_ascii=False)
    return "b64:" + base64.b64encode(message.data).decode() if binary else message.data


def tell(text: str) -> None:
    """A line about the connection, on stderr."""
    print(f"asok_green.client: {text}", file=sys.stderr, flush=True)


def on_event(kind: str, detail: dict) -> None:
    """Links, reconnects and replays, told on stderr."""
    if kind == "open":
        tell("reconnected" if detail.get("reconnected") else f"connected to {detail.get('url', 'the server')}")
    elif kind == "reconnecting":
        tell(f"link lost ({detail['code']}: {detail['reason']}); reconnecting in {detail['delay']:.2f}s")
    elif kind == "resumed":
        tell(f"resumed {detail['stream']} at {detail['epoch']}:{detail['offset']}, {detail['replayed']} replayed")


def main(argv: list[str] | None = None) -> int:
    """Tail the stream; the exit status."""
    args = parse_args(argv)
    cookies = dict(item.split("=", 1) for item in args.cookie if "=" in item)
    headers = dict((part.strip() for part in item.split(":", 1)) for item in args.header if ":" in item)
    saved = json.loads(args.state.read_text()) if args.state and args.state.exists() else None
    client = ResumingClient(
        args.url,
        cookies=cookies,
        headers=headers,
        origin=args.origin,
        positions=saved,
        on_continuity_lost=lambda lost: tell(str(lost)),
        on_event=on_event,
    )
    received = 0
    try:
        for room in args.join:
            client.join(room)
        while args.count is None or received < args.count:
            try:
                message = client.recv(args.timeout)
            except TimeoutError:
                tell(f"no message within {args.timeout:g}s")
                return 3
            except ContinuityLost as lost:  # only without on_continuity_lost; kept for clarity
                tell(str(lost))
                continue
            print(format_message(message, args.json), flush=True)
            received += 1
        return 0
    except HandshakeFailed as refused:
        tell(str(refused))
        return 2
    except ClientClosed as closed:
        tell(f"the server closed the stream: {closed.code} {closed.reason}".rstrip())
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
        if args.state:
            args.state.write_text(json.dumps(client.positions_dict()))


if __name__ == "__main__":
    sys.exit(main())
