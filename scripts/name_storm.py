"""What a storm of new names costs a server: RSS before, after, and after a second storm.

    python scripts/name_storm.py                 # 40,000 rooms twice, 3,000 paths
    python scripts/name_storm.py --rooms 2000    # a smaller storm

One ``asok serve --gevent`` process on a project whose rooms and ``/feed/[topic]``
paths keep history (the SQLite store, the default; ``--store memory`` for the
other). One ``asok-green.v1`` guest on ``/asok/live`` joins and leaves
``--rooms`` new rooms (each join is answered with the room stream's position),
then does it again with other names; then ``--paths`` v1 clients each open and
close a new ``/feed/<name>``. The server's RSS (``/proc/<pid>/status``) is
printed after a warm-up, after each storm, and the growth in percent.

Run it with the Python of the tree to measure (``/work/main/.venv/bin/python
scripts/name_storm.py`` measures that tree's asok_green: the server is started
with the ``asok`` beside that Python).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import websocket  # noqa: E402

from tests.asok_project import make_project, project_env  # noqa: E402
from tests.conftest import asok_serve  # noqa: E402

STORM_APP = """
ws.keep_history("room:*", size=50)
ws.keep_history("/feed/[topic]", size=50)


@ws.on("/feed/[topic]")
def on_feed(conn, message):
    ws.broadcast(conn.path, message)


@ws.room_authorizer
def allow_every_room(conn, room):
    return True
"""

#: Joins (and leaves) sent before their answers are read.
BATCH = 200


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def v1(server, path: str) -> websocket.WebSocket:
    """A client speaking asok-green.v1 on ``path``."""
    return websocket.create_connection(
        server.ws_url + path, origin=server.url, subprotocols=["asok-green.v1"], timeout=30
    )


def room_storm(server, prefix: str, count: int) -> None:
    """One v1 guest joins and leaves ``count`` new rooms, reading each join's answer."""
    client = v1(server, "/asok/live")
    for start in range(0, count, BATCH):
        names = [f"{prefix}-{i}" for i in range(start, min(count, start + BATCH))]
        for name in names:
            client.send(json.dumps({"op": "join_room", "room": name}))
            client.send(json.dumps({"op": "leave_room", "room": name}))
        for _ in names:
            frame = json.loads(client.recv())
            if frame.get("asok") != "position":
                raise RuntimeError(f"unexpected answer to a join: {frame}")
    client.close()


def path_storm(server, prefix: str, count: int) -> None:
    """``count`` v1 clients each open a new ``/feed/<name>`` and close it."""
    for i in range(count):
        client = v1(server, f"/feed/{prefix}{i}")
        client.recv()  # the position
        client.close()


def main(argv: list[str] | None = None) -> int:
    """Run the storms and print the RSS after each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=40_000)
    parser.add_argument("--paths", type=int, default=3_000)
    parser.add_argument("--store", default="sqlite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        project = make_project(root / "project", extra_wsgi=STORM_APP)
        server = asok_serve(project, root, env=project_env(WS_HISTORY_STORE=args.store))
        try:
            pid = server.proc.pid
            room_storm(server, "warm", 500)
            path_storm(server, "warm", 100)
            before = rss_kib(pid)
            print(f"before:              {before / 1024:7.1f} MiB")
            room_storm(server, "a", args.rooms)
            print(f"after {args.rooms} rooms:  {rss_kib(pid) / 1024:7.1f} MiB")
            room_storm(server, "b", args.rooms)
            print(f"after the second:    {rss_kib(pid) / 1024:7.1f} MiB")
            path_storm(server, "p", args.paths)
            after = rss_kib(pid)
            print(f"after {args.paths} paths:   {after / 1024:7.1f} MiB")
            print(f"growth: {100 * (after - before) / before:+.1f}%")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
