"""The demo chat: Asok pages plus the WebSocket handlers of the Asok docs.

Run it with `asok serve --gevent` (pages and sockets on one port), after
`python seed_db.py` has created the database.
"""

import re

from asok import Asok, WebSocketServer

app = Asok()
ws = WebSocketServer(port=8001, app=app)

ROOM = re.compile(r"[a-z0-9-]{1,40}")
MAX_MESSAGE = 500


def display_name(conn) -> str:
    """The name shown for a connection: its user's name, or "Guest"."""
    return conn.user.name if conn.user else "Guest"


@ws.on("/chat/[room]")
def on_message(conn, message):
    """Relay a chat line to everyone in the room, the sender included."""
    room = conn.params["room"]
    ws.broadcast(f"/chat/{room}", f"{display_name(conn)}: {message[:MAX_MESSAGE]}")


@ws.on_connect("/chat/[room]")
def on_join(conn):
    """Tell the room that someone arrived."""
    ws.broadcast(conn.path, f"{display_name(conn)} joined", exclude=conn)


@ws.on_disconnect("/chat/[room]")
def on_leave(conn):
    """Tell the room that someone left."""
    ws.broadcast(conn.path, f"{display_name(conn)} left")


@ws.room_authorizer
def authorize_room_join(conn, room):
    """Let anyone join a `chat:<name>` room (typing indicators); refuse the rest."""
    prefix, _, name = room.partition(":")
    return prefix == "chat" and ROOM.fullmatch(name) is not None


ws.start()
