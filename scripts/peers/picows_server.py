"""picows: ``ws_create_server`` with one ``WSListener`` per connection (frame callbacks, no coroutines).

    python scripts/peers/picows_server.py --port PORT

Routes and control protocol: see scripts/peers/__init__.py. A plain HTTP GET gets
a short 200 from the listener factory. Run on uvloop, as picows recommends.
Messages are single frames (the bench's clients never fragment).
"""

import argparse
import json
import resource

import uvloop
from picows import WSListener, WSMsgType, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server

ROOM: set = set()
SHOOTOUT: set = set()


def fan_out(members: set, payload: bytes, exclude=None) -> None:
    """Send ``payload`` as a text frame to every transport in ``members`` but ``exclude``."""
    for transport in members:
        if transport is not exclude:
            transport.send(WSMsgType.TEXT, payload)


class Echo(WSListener):
    """Every message back to its sender."""

    def on_ws_frame(self, transport, frame) -> None:
        """Echo data frames; answer a close."""
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            transport.send(frame.msg_type, frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Member(WSListener):
    """A subscriber of ``members``; runs the control protocol (/room) or broadcast requests (/shootout)."""

    def __init__(self, members: set):
        self.members = members

    def on_ws_connected(self, transport) -> None:
        """Subscribe."""
        self.members.add(transport)

    def on_ws_disconnected(self, transport) -> None:
        """Unsubscribe."""
        self.members.discard(transport)

    def on_ws_frame(self, transport, frame) -> None:
        """Control messages and broadcast requests; answer a close."""
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        text = frame.get_payload_as_utf8_text()
        if self.members is ROOM and text.startswith("!bcast "):
            _, count, size = text.split()
            data = "x" * int(size)
            for seq in range(int(count)):
                fan_out(ROOM, json.dumps({"seq": seq, "data": data}).encode(), exclude=transport)
            transport.send(WSMsgType.TEXT, f"!done {count}".encode())
        elif self.members is SHOOTOUT:
            request = json.loads(text)
            if request.get("type") == "broadcast":
                fan_out(SHOOTOUT, json.dumps({"type": "broadcast", "payload": request["payload"]}).encode())


def route(request):
    """The listener for the request's path; a short 200 for a plain GET."""
    if request.headers.get("upgrade", "").lower() != "websocket":
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok\n"), None)
    path = request.path.split(b"?")[0]
    if path == b"/echo":
        return Echo()
    if path == b"/room":
        return Member(ROOM)
    if path == b"/shootout":
        return Member(SHOOTOUT)
    return None


async def run(host: str, port: int) -> None:
    """Serve until cancelled."""
    server = await ws_create_server(route, host, port, backlog=2048)
    print(f"picows on ws://{host}:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
