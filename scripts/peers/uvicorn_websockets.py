"""uvicorn (h11 HTTP, websockets WebSocket) with a bare ASGI app and the obvious loops.

    python scripts/peers/uvicorn_websockets.py --port PORT

Routes and control protocol: see scripts/peers/__init__.py. HTTP on the same
port: a request's body is read whole, as a web framework does, then a short
200. Needs ``pip install uvicorn websockets`` (not a dependency of asok_green).
"""

from __future__ import annotations

import argparse
import json
import resource

import uvicorn

ROOM: set = set()


async def websocket(scope, receive, send) -> None:
    """Accept; echo on /echo, the control protocol on /room, echo elsewhere."""
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    path = scope["path"]
    if path == "/room":
        ROOM.add(send)
    try:
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            text, data = event.get("text"), event.get("bytes")
            if path == "/room" and text and text.startswith("!bcast "):
                _, count, size = text.split()
                payload = "x" * int(size)
                for seq in range(int(count)):
                    message = json.dumps({"seq": seq, "data": payload})
                    for other in list(ROOM):
                        if other is not send:
                            try:
                                await other({"type": "websocket.send", "text": message})
                            except Exception:  # noqa: BLE001 - a subscriber that went away
                                ROOM.discard(other)
                await send({"type": "websocket.send", "text": f"!done {count}"})
            elif text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": data})
    finally:
        ROOM.discard(send)


async def app(scope, receive, send) -> None:
    """The ASGI app: WebSockets as above; HTTP reads the body, then answers a short 200."""
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    more = True
    while more:
        event = await receive()
        if event["type"] == "http.disconnect":
            return
        more = event.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok\n"})


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvicorn.run(app, host=args.host, port=args.port, http="h11", ws="websockets", log_level="info")


if __name__ == "__main__":
    main()
