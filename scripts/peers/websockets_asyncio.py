"""websockets (asyncio): ``websockets.asyncio.server.serve`` with its defaults and the obvious loops.

    python scripts/peers/websockets_asyncio.py --port PORT

Routes and control protocol: see scripts/peers/__init__.py. HTTP on the same port
(``process_request`` answers requests that are not upgrades).
"""

import argparse
import asyncio
import json
import resource

from websockets.asyncio.server import broadcast, serve

ROOM: set = set()
SHOOTOUT: set = set()


async def echo(ws) -> None:
    """Send every message back."""
    async for message in ws:
        await ws.send(message)


async def room(ws) -> None:
    """Subscribe ``ws`` to the room; run the control protocol on its messages."""
    ROOM.add(ws)
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("!bcast "):
                _, count, size = message.split()
                data = "x" * int(size)
                others = [other for other in ROOM if other is not ws]
                for seq in range(int(count)):
                    broadcast(others, json.dumps({"seq": seq, "data": data}))
                await ws.send(f"!done {count}")
    finally:
        ROOM.discard(ws)


async def shootout(ws) -> None:
    """Subscribe ``ws``; send each broadcast request to every subscriber, the sender included."""
    SHOOTOUT.add(ws)
    try:
        async for message in ws:
            request = json.loads(message)
            if request.get("type") == "broadcast":
                broadcast(SHOOTOUT, json.dumps({"type": "broadcast", "payload": request["payload"]}))
    finally:
        SHOOTOUT.discard(ws)


async def handler(ws) -> None:
    """Route by path."""
    if ws.request.path == "/echo":
        await echo(ws)
    elif ws.request.path == "/room":
        await room(ws)
    elif ws.request.path == "/shootout":
        await shootout(ws)


def plain_http(connection, request):
    """Answer a request that is not a WebSocket upgrade with a short 200."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return connection.respond(200, "ok\n")
    return None


async def run(host: str, port: int) -> None:
    """Serve until cancelled."""
    async with serve(handler, host, port, process_request=plain_http) as server:
        print(f"websockets on ws://{host}:{port}", flush=True)
        await server.serve_forever()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
