"""The demo chat: Asok pages plus the WebSocket handlers of the Asok docs.

Run it with `asok serve --gevent` (pages and sockets on one port), after
`python seed_db.py` has created the database.

Chat lines travel on `/chat/<room>` as JSON with an id, so that read receipts
(`{"op": "receipt", ...}` on `/asok/live`) can name the message they are about.
Each `/chat/<room>` path keeps its last broadcasts (`history=`): the page's resume
client gets back what it missed while its link was down. A newcomer gets the
room's recent lines from `on_join`; the page drops a line it already shows.
"""

import itertools
import re
import time
from collections import deque

from asok import Asok, WebSocketServer

app = Asok()
ws = WebSocketServer(port=8001, app=app)

ROOM = re.compile(r"[a-z0-9-]{1,40}")
MAX_MESSAGE = 500
HISTORY = 50
CHAT_HISTORY = 200  # what a resume client can get back after a dropped link
MAX_ROOMS_WITH_HISTORY = 100

_message_ids = itertools.count(1)
_history: dict[str, deque] = {}


def display_name(conn) -> str:
    """The name shown for a connection: its user's name, or "Guest"."""
    return conn.user.name if conn.user else "Guest"


def remember(room: str, line: dict) -> None:
    """Keep the room's last HISTORY lines for newcomers (for a bounded number of rooms)."""
    if room in _history or len(_history) < MAX_ROOMS_WITH_HISTORY:
        _history.setdefault(room, deque(maxlen=HISTORY)).append(line)


@ws.on("/chat/[room]", history=CHAT_HISTORY)
def on_message(conn, message):
    """Relay a chat line to everyone in the room, the sender included."""
    text = message.strip()[:MAX_MESSAGE] if isinstance(message, str) else ""
    if not text:
        return
    line = {
        "type": "message",
        "id": next(_message_ids),
        "user_id": conn.user.id if conn.user else None,
        "name": display_name(conn),
        "text": text,
        "at": int(time.time()),
    }
    remember(conn.params["room"], line)
    ws.broadcast_json(conn.path, line)


@ws.on_connect("/chat/[room]")
def on_join(conn):
    """Replay the room's recent lines to the newcomer."""
    for line in _history.get(conn.params["room"], ()):
        conn.send_json(line)


@ws.room_authorizer
def authorize_room_join(conn, room):
    """Let anyone join a `chat:<name>` room (presence, typing, receipts); refuse the rest."""
    prefix, _, name = room.partition(":")
    return prefix == "chat" and ROOM.fullmatch(name) is not None


ws.start()
