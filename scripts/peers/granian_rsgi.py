"""granian: a plain RSGI app (granian's own interface, its fastest) on one granian worker.

    python scripts/peers/granian_rsgi.py --port PORT

Routes and control protocol: see scripts/peers/__init__.py. HTTP on the same port.
granian runs the app in a worker process it spawns (Rust runtime threads plus the
Python event loop, uvloop here); the bench measures that worker.
"""

import argparse
import json
import pathlib
import resource

ROOM: set = set()
SHOOTOUT: set = set()


async def fan_out(members: set, text: str, exclude=None) -> None:
    """Send ``text`` to every transport in ``members`` but ``exclude``."""
    for transport in list(members):
        if transport is not exclude:
            try:
                await transport.send_str(text)
            except Exception:  # the client went away; its own loop ends too
                members.discard(transport)


async def websocket(scope, proto) -> None:
    """Accept, then serve /echo, /room or /shootout until the client leaves."""
    transport = await proto.accept()
    path = scope.path
    members = ROOM if path == "/room" else SHOOTOUT if path == "/shootout" else None
    if members is not None:
        members.add(transport)
    try:
        while True:
            message = await transport.receive()
            if message.kind == 0:  # close
                break
            if path == "/echo":
                if message.kind == 2:
                    await transport.send_str(message.data)
                else:
                    await transport.send_bytes(message.data)
            elif message.kind != 2:
                continue
            elif path == "/room" and message.data.startswith("!bcast "):
                _, count, size = message.data.split()
                data = "x" * int(size)
                for seq in range(int(count)):
                    await fan_out(ROOM, json.dumps({"seq": seq, "data": data}), exclude=transport)
                await transport.send_str(f"!done {count}")
            elif path == "/shootout":
                request = json.loads(message.data)
                if request.get("type") == "broadcast":
                    await fan_out(SHOOTOUT, json.dumps({"type": "broadcast", "payload": request["payload"]}))
    except Exception:  # the protocol closed under us
        pass
    finally:
        if members is not None:
            members.discard(transport)
    proto.close()


async def app(scope, proto) -> None:
    """The RSGI application: WebSockets by path, a short 200 for any HTTP request."""
    if scope.proto == "ws":
        await websocket(scope, proto)
    else:
        proto.response_str(200, [("content-type", "text/plain")], "ok\n")


def main() -> None:
    """Parse the command line and serve."""
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"granian (RSGI) on ws://{args.host}:{args.port}", flush=True)
    Server(
        "granian_rsgi:app",
        address=args.host,
        port=args.port,
        interface=Interfaces.RSGI,
        workers=1,
        loop=Loops.uvloop,
        websockets=True,
        backlog=2048,
        log_access=False,
        working_dir=pathlib.Path(__file__).resolve().parent,
    ).serve()


if __name__ == "__main__":
    main()
