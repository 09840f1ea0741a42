"""uvicorn: a plain ASGI app (no framework) served by uvicorn with its ``websockets`` or ``wsproto`` backend.

    python scripts/peers/asgi_uvicorn.py --port PORT --ws websockets|wsproto [--http httptools|h11]

Routes and control protocol: see scripts/peers/__init__.py. HTTP on the same port: a
request's body is read whole, as a web framework does, then a short 200.
uvicorn as ``uvicorn[standard]`` deploys it: uvloop and httptools (or h11), one process,
access log off. A broadcast is the obvious loop: ``await send(...)`` to every
subscriber in turn.
"""

import argparse
import json
import resource

import uvicorn

ROOM: set = set()
SHOOTOUT: set = set()


async def fan_out(members: set, text: str, exclude=None) -> None:
    """Send ``text`` to every subscriber in ``members`` but ``exclude``; drop the ones that are gone."""
    event = {"type": "websocket.send", "text": text}
    for send in list(members):
        if send is not exclude:
            try:
                await send(event)
            except Exception:  # the client went away; its own loop ends too
                members.discard(send)


async def websocket(scope, receive, send) -> None:
    """Accept, then serve /echo, /room or /shootout until the client leaves."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    path = scope["path"]
    members = ROOM if path == "/room" else SHOOTOUT if path == "/shootout" else None
    if members is not None:
        members.add(send)
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                return
            text = event.get("text")
            if path == "/echo":
                reply = {"text": text} if text is not None else {"bytes": event.get("bytes")}
                await send({"type": "websocket.send", **reply})
            elif path == "/room" and text and text.startswith("!bcast "):
                _, count, size = text.split()
                data = "x" * int(size)
                for seq in range(int(count)):
                    await fan_out(ROOM, json.dumps({"seq": seq, "data": data}), exclude=send)
                await send({"type": "websocket.send", "text": f"!done {count}"})
            elif path == "/shootout" and text:
                request = json.loads(text)
                if request.get("type") == "broadcast":
                    await fan_out(SHOOTOUT, json.dumps({"type": "broadcast", "payload": request["payload"]}))
    finally:
        if members is not None:
            members.discard(send)


async def app(scope, receive, send) -> None:
    """The ASGI application: WebSockets by path, a short 200 for any HTTP request."""
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "http":
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
    parser.add_argument("--ws", choices=("websockets", "wsproto"), default="websockets")
    parser.add_argument("--http", choices=("httptools", "h11"), default="httptools")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"uvicorn ({args.http}, {args.ws}) on ws://{args.host}:{args.port}", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ws=args.ws,
        loop="uvloop",
        http=args.http,
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )


if __name__ == "__main__":
    main()
