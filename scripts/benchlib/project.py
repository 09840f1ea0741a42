"""The Asok project that asok_green and Asok's threaded server both serve in the bench.

It is the test suite's generated project (tests/asok_project.py: real SQLite
users, login page, the doc's handlers, ``/echo``) plus the ``/room`` route of the
bench's control protocol and the ``/shootout`` broadcast route (scripts/peers/__init__.py), with DEBUG off as in
production.
"""

from __future__ import annotations

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.asok_project import cookie_header, login, make_project, project_env  # noqa: E402

__all__ = ["BENCH_ROUTES", "auth_cookie", "make_bench_project", "project_env"]

BENCH_ROUTES = '''
import json


@ws.on("/room")
def bench_room(conn, message):
    """The bench's control protocol: `!bcast COUNT SIZE` broadcasts COUNT JSON messages to /room."""
    if isinstance(message, str) and message.startswith("!bcast "):
        _, count, size = message.split()
        data = "x" * int(size)
        for seq in range(int(count)):
            ws.broadcast_json("/room", {"seq": seq, "data": data}, exclude=conn)
        conn.send(f"!done {count}")


@ws.on("/shootout")
def bench_shootout(conn, message):
    """The websocket-shootout's broadcast: every /shootout connection gets it, the sender included."""
    request = json.loads(message)
    if request.get("type") == "broadcast":
        ws.broadcast_json("/shootout", {"type": "broadcast", "payload": request["payload"]})
'''


def make_bench_project(root: pathlib.Path) -> pathlib.Path:
    """Create the bench project in ``root`` (seeded database included) and return its path."""
    return make_project(root, extra_wsgi=BENCH_ROUTES, debug=False)


def auth_cookie(base_url: str, user: str = "alice") -> str:
    """Log in over HTTP as a browser would and return the Cookie header it would send."""
    return cookie_header(login(base_url, user))
