"""/: the chat room named by `?room=` (default "general")."""

import json
import re

import seeds
from asok import Request
from asok.orm import MODELS_REGISTRY


def render(request: Request):
    """Render the room, with the user list the presence panel needs."""
    room = room_name(request.args.get("room"))
    users = {user.id: user.name for user in MODELS_REGISTRY["User"].all()}
    me = request.user
    return request.html(
        "page.html",
        room=room,
        users_json=json.dumps(users),
        me_id=me.id if me else "",
        me_name=me.name if me else "Guest",
        demo_users=seeds.USERS.items(),
    )


def room_name(raw) -> str:
    """Normalise a room name to lowercase letters, digits and dashes."""
    name = re.sub(r"[^a-z0-9-]+", "-", str(raw or "").lower()).strip("-")[:40]
    return name.strip("-") or "general"
