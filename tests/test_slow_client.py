"""A client that stops reading cannot stall a room: 1,000 real clients, one of them stuck.

The test Asok project's doc chat handler (``/chat/[room]``) broadcasts every
message to the room. ``tests/fanout_clients.py`` runs the clients in a process
of their own: 999 read everything, one never reads. After 200 broadcasts the
999 must have every message, the stuck one must have been closed with 1008,
and the median delivery time must stay within 2x of the same run without it.

The server caps each connection's kernel send buffer (``WS_SEND_BUFFER``):
otherwise Linux lets the kernel absorb several MiB for the stuck client
before the server's own queue (the 1 MiB default, which is what is tested)
sees anything.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from tests.asok_project import project_env
from tests.conftest import asok_serve
from tests.echo import ROOT

CLIENTS = 1000
BROADCASTS = 200
WARMUP = 20
SIZE = 8192


def fan_out(port: int, path: str, stuck: bool) -> dict:
    """Run tests/fanout_clients.py against the server; its JSON result."""
    argv = [sys.executable, "-m", "tests.fanout_clients", "--port", str(port), "--path", path]
    argv += ["--clients", str(CLIENTS), "--broadcasts", str(BROADCASTS), "--warmup", str(WARMUP), "--size", str(SIZE)]
    if stuck:
        argv.append("--stuck")
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(240)
def test_stuck_client_is_closed_and_the_room_keeps_its_pace(project, tmp_path):
    env = project_env(WS_SEND_BUFFER="65536", WS_CLOSE_TIMEOUT="60")
    server = asok_serve(project, tmp_path, env=env)
    try:
        baseline = fan_out(server.port, "/chat/baseline", stuck=False)
        with_stuck = fan_out(server.port, "/chat/stuck", stuck=True)
        log = server.log()
    finally:
        server.stop()

    assert baseline["readers_with_every_message"] == CLIENTS
    assert with_stuck["readers"] == CLIENTS - 1
    assert with_stuck["readers_with_every_message"] == CLIENTS - 1
    assert with_stuck["readers_closed"] == 0

    stuck = with_stuck["stuck"]
    assert stuck["close_code"] == 1008
    assert stuck["messages"] < WARMUP + BROADCASTS  # it was dropped, not waited for
    assert log.count("closing slow consumer") == 1
    assert "on /chat/stuck: " in log

    base = statistics.median(baseline["delivery_ms"])
    slow = statistics.median(with_stuck["delivery_ms"])
    ratio = slow / base
    print(
        f"\nmedian delivery of one broadcast to {CLIENTS - 1} readers: {base:.1f} ms without the stuck client, "
        f"{slow:.1f} ms with it (ratio {ratio:.2f}); stuck client got {stuck['messages']} messages, then 1008"
    )
    assert len(baseline["delivery_ms"]) == len(with_stuck["delivery_ms"]) == BROADCASTS
    assert ratio <= 2.0
