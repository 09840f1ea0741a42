"""socketify: uWebSockets (C++) through socketify, with uWS's own pub/sub for the broadcasts.

    python scripts/peers/socketify_server.py --port PORT

Routes and control protocol: see scripts/peers/__init__.py. HTTP on the same port.
A subscriber is subscribed to a uWS topic; a broadcast is one ``publish`` (uWS
writes it to every subscriber in C++). Idle connections are never timed out
(``idle_timeout`` 0) and not pinged, as the other peers hold them.
"""

import argparse
import json
import resource

from socketify import App, AppListenOptions, CompressOptions, OpCode

APP = App()


def on_echo(ws, message, opcode) -> None:
    """Every message back to its sender."""
    ws.send(message, opcode)


def on_room_open(ws) -> None:
    """Subscribe to the room."""
    ws.subscribe("room")


def on_room(ws, message, opcode) -> None:
    """The control protocol: ``!bcast COUNT SIZE`` publishes to every other subscriber."""
    if opcode == OpCode.TEXT and message.startswith("!bcast "):
        _, count, size = message.split()
        data = "x" * int(size)
        # socketify's publish reaches the sender too: it leaves the topic for its broadcast.
        ws.unsubscribe("room")
        for seq in range(int(count)):
            APP.publish("room", json.dumps({"seq": seq, "data": data}), OpCode.TEXT)
        ws.subscribe("room")
        ws.send(f"!done {count}", OpCode.TEXT)


def on_shootout_open(ws) -> None:
    """Subscribe to the shootout topic."""
    ws.subscribe("shootout")


def on_shootout(ws, message, opcode) -> None:
    """A broadcast request goes to every subscriber, the sender included."""
    request = json.loads(message)
    if request.get("type") == "broadcast":
        APP.publish("shootout", json.dumps({"type": "broadcast", "payload": request["payload"]}), OpCode.TEXT)


def behaviour(on_message, on_open=None) -> dict:
    """A route's WebSocket settings: no compression, no idle timeout, no automatic pings."""
    return {
        "compression": CompressOptions.DISABLED,
        "max_payload_length": 16 * 1024 * 1024,
        "idle_timeout": 0,
        "send_pings_automatically": False,
        "open": on_open,
        "message": on_message,
    }


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    APP.ws("/echo", behaviour(on_echo))
    APP.ws("/room", behaviour(on_room, on_room_open))
    APP.ws("/shootout", behaviour(on_shootout, on_shootout_open))
    APP.get("/*", lambda res, req: res.end("ok\n"))
    APP.listen(AppListenOptions(port=args.port, host=args.host), lambda config: None)
    print(f"socketify on ws://{args.host}:{args.port}", flush=True)
    APP.run()


if __name__ == "__main__":
    main()
