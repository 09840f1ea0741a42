"""Bare gevent-websocket: a pywsgi server, WebSocketHandler, and the obvious loops.

    python scripts/peers/gevent_websocket.py --port PORT

Routes and control protocol: see scripts/peers/__init__.py. HTTP on the same port.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.exceptions import WebSocketError  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

ROOM: set = set()
SHOOTOUT: set = set()


def echo(ws) -> None:
    """Send every message back."""
    while True:
        message = ws.receive()
        if message is None:
            return
        ws.send(message)


def broadcast(text: str, exclude, members: set = ROOM) -> None:
    """Send ``text`` to every subscriber in ``members`` (the /room ones by default) but ``exclude``."""
    for ws in list(members):
        if ws is not exclude:
            try:
                ws.send(text)
            except WebSocketError:
                members.discard(ws)


def room(ws) -> None:
    """Subscribe ``ws`` to the room; run the control protocol on its messages."""
    ROOM.add(ws)
    try:
        while True:
            message = ws.receive()
            if message is None:
                return
            if isinstance(message, str) and message.startswith("!bcast "):
                _, count, size = message.split()
                data = "x" * int(size)
                for seq in range(int(count)):
                    broadcast(json.dumps({"seq": seq, "data": data}), ws)
                ws.send(f"!done {count}")
    finally:
        ROOM.discard(ws)


def shootout(ws) -> None:
    """Subscribe ``ws``; send each broadcast request to every subscriber, the sender included."""
    SHOOTOUT.add(ws)
    try:
        while True:
            message = ws.receive()
            if message is None:
                return
            request = json.loads(message)
            if request.get("type") == "broadcast":
                broadcast(json.dumps({"type": "broadcast", "payload": request["payload"]}), None, SHOOTOUT)
    finally:
        SHOOTOUT.discard(ws)


def app(environ, start_response):
    """WebSockets on /echo and /room; a short 200 for anything else."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]
    try:
        if environ["PATH_INFO"] == "/echo":
            echo(ws)
        elif environ["PATH_INFO"] == "/room":
            room(ws)
        elif environ["PATH_INFO"] == "/shootout":
            shootout(ws)
    except WebSocketError:
        pass
    return []


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"gevent-websocket on ws://{args.host}:{args.port}", flush=True)
    WSGIServer((args.host, args.port), app, handler_class=WebSocketHandler, log=None).serve_forever()


if __name__ == "__main__":
    main()
