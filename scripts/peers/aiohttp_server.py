"""aiohttp: ``web.Application`` with ``WebSocketResponse`` handlers and the obvious loops.

    python scripts/peers/aiohttp_server.py --port PORT

Routes and control protocol: see scripts/peers/__init__.py. HTTP on the same port.
Run on uvloop (as aiohttp's ``GunicornUVLoopWebWorker`` deploys it), access log off.
"""

import argparse
import json
import resource

import uvloop
from aiohttp import WSMsgType, web

ROOM: set = set()
SHOOTOUT: set = set()


async def fan_out(members: set, text: str, exclude=None) -> None:
    """Send ``text`` to every subscriber in ``members`` but ``exclude``."""
    for ws in list(members):
        if ws is not exclude and not ws.closed:
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                members.discard(ws)


async def websocket(request: web.Request) -> web.StreamResponse:
    """Serve /echo, /room or /shootout until the client leaves."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    path = request.path
    members = ROOM if path == "/room" else SHOOTOUT if path == "/shootout" else None
    if members is not None:
        members.add(ws)
    try:
        async for msg in ws:
            if path == "/echo":
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            elif msg.type != WSMsgType.TEXT:
                continue
            elif path == "/room" and msg.data.startswith("!bcast "):
                _, count, size = msg.data.split()
                data = "x" * int(size)
                for seq in range(int(count)):
                    await fan_out(ROOM, json.dumps({"seq": seq, "data": data}), exclude=ws)
                await ws.send_str(f"!done {count}")
            elif path == "/shootout":
                got = json.loads(msg.data)
                if got.get("type") == "broadcast":
                    await fan_out(SHOOTOUT, json.dumps({"type": "broadcast", "payload": got["payload"]}))
    finally:
        if members is not None:
            members.discard(ws)
    return ws


async def page(request: web.Request) -> web.Response:
    """A short 200."""
    return web.Response(text="ok\n")


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = web.Application()
    app.add_routes([web.get(p, websocket) for p in ("/echo", "/room", "/shootout")] + [web.get("/", page)])
    print(f"aiohttp on ws://{args.host}:{args.port}", flush=True)
    web.run_app(
        app, host=args.host, port=args.port, access_log=None, print=None, backlog=2048, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
