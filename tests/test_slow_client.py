"""A client that stops reading cannot stall a room: 1,000 real clients, one of them stuck.

The test Asok project's doc chat handler (``/chat/[room]``) broadcasts every
message to the room. ``tests/fanout_clients.py`` runs the clients in a process
of their own: 999 read everything, one never reads until the run is over. Each
message goes out only once every reader has the previous one, and must reach
them all within ``DELIVERY_DEADLINE`` seconds. A broadcast that waited on the
stuck client's socket would never deliver past it, so the run would fail.

What is checked is the order of events, not how fast they happen:

- with the default queue limit, the readers get all 220 messages, in order,
  while the stuck client stays connected; its queue passes the limit and it
  gets 1008. It reads that close frame after the run, which shows the room never
  waited for the stuck client to be dropped: the server's close timeout
  (``CLOSE_TIMEOUT``, far longer than the run) had not yet run out;
- with a queue limit so large that the stuck client is never closed, the readers
  still get every message, and the stuck client, read at last, gets them all
  too: it was connected, its queue growing, for the whole run.

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
TOTAL = WARMUP + BROADCASTS
SIZE = 8192
#: Seconds one message may take to reach all 999 readers (it takes milliseconds).
DELIVERY_DEADLINE = 20
#: Seconds the server waits for a closed client's answer: far longer than the whole run.
CLOSE_TIMEOUT = 600
#: A queue limit the stuck client never reaches: every message it is sent stays queued.
NO_QUEUE_LIMIT = 1 << 30


def fan_out(port: int, path: str) -> dict:
    """Run tests/fanout_clients.py, one client stuck, against the server; its JSON result."""
    argv = [sys.executable, "-m", "tests.fanout_clients", "--port", str(port), "--path", path, "--stuck"]
    argv += ["--clients", str(CLIENTS), "--broadcasts", str(BROADCASTS), "--warmup", str(WARMUP), "--size", str(SIZE)]
    argv += ["--timeout", str(DELIVERY_DEADLINE)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def run_room(project, tmp_path, path: str, **env: str) -> tuple[dict, str]:
    """Serve the project with ``env``, fan out on ``path``: the clients' result and the server's log."""
    env = project_env(WS_SEND_BUFFER="65536", WS_CLOSE_TIMEOUT=str(CLOSE_TIMEOUT), **env)
    server = asok_serve(project, tmp_path, env=env)
    try:
        result = fan_out(server.port, path)
        log = server.log()
    finally:
        server.stop()
    return result, log


def assert_every_reader_got_every_message(result: dict) -> None:
    # fanout_clients.py fails the run if a reader gets a message out of order.
    assert result["readers"] == CLIENTS - 1
    assert result["readers_with_every_message"] == CLIENTS - 1
    assert result["readers_closed"] == 0
    assert len(result["delivery_ms"]) == BROADCASTS


def report(what: str, result: dict) -> None:
    """Print the delivery time, for information only: timings are the benchmarks' business."""
    median = statistics.median(result["delivery_ms"])
    stuck = result["stuck"]
    print(
        f"\n{what}: median delivery of one broadcast to {CLIENTS - 1} readers {median:.1f} ms; "
        f"stuck client got {stuck['messages']} messages, close code {stuck['close_code']}"
    )


@pytest.mark.timeout(150)
def test_stuck_client_is_closed_1008_while_the_room_gets_every_message(project, tmp_path):
    result, log = run_room(project, tmp_path, "/chat/stuck")
    report("default queue limit", result)

    assert_every_reader_got_every_message(result)
    stuck = result["stuck"]
    assert stuck["messages"] < TOTAL  # it was dropped, not waited for
    assert stuck["close_code"] == 1008  # and was still connected when the room was done
    assert log.count("closing slow consumer") == 1
    assert "on /chat/stuck: " in log


@pytest.mark.timeout(150)
def test_the_room_gets_every_message_while_a_stuck_client_queue_grows(project, tmp_path):
    result, log = run_room(project, tmp_path, "/chat/unbounded", WS_MAX_QUEUE=str(NO_QUEUE_LIMIT))
    report("no queue limit", result)

    assert_every_reader_got_every_message(result)
    stuck = result["stuck"]
    assert stuck["close_code"] is None  # never closed...
    assert stuck["messages"] == TOTAL  # ...and every message waited in its queue
    assert "closing slow consumer" not in log
