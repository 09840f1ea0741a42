"""Where a peer beats asok_green: the row, the peer, by how much, the profile of asok_green there and the cause.

The rows come from the run (benchlib/field.py ranks them); the causes are what
the profiles of asok_green under those rows show (py-spy, benchlib/profiling.py)
and what the peer does differently, written down once here.
"""

from __future__ import annotations

from .field import ranking
from .targets import GREEN, peer

#: Row family -> (the profile of asok_green that explains it, the cause and whether it can be closed).
CAUSES = {
    "idle": (
        None,
        "An idle asok_green connection is a gevent socket (the socket object, the `_socket.socket` inside it "
        "and its read watcher), a `Connection` with its parsed request head, and the hub's entries: about "
        "2 KB of Python objects and no greenlet (see *Idle memory: what a connection is made of*). socketify "
        "holds a connection in uWS's C++ structures, a few hundred bytes, and Python sees it only when a "
        "callback runs. That gap cannot be closed in pure Python: each of those objects costs its header and "
        "its dict or slots, and gevent needs its watcher per socket. Among the Python-hosted peers, "
        "asok_green holds the least.",
    ),
    "fanout": (
        "fanout",
        "A broadcast is one `send` system call per subscriber: the frame is encoded once, and the messages of "
        "one loop turn are coalesced into one write per connection. Nearly every sample of the profile is on "
        "the line that makes that call (`Outbound._enqueue`), that is, in the kernel, which on loopback also "
        "does the receiving side's TCP work in the sender's context; the Python loop over the subscribers and "
        "the check of each connection's bounded send queue are the few samples left. *The floor* below is "
        "the same `send` loop in C. So what separates asok_green from picows here is not Python but the cost "
        "of the sends themselves; one difference between the two sockets is that asok_green sets `SO_SNDBUF` "
        "on every upgraded socket (`WS_SEND_BUFFER`) where picows leaves the kernel's autotuning (whether "
        "that moves the cost of a `send` was not measured here). The time to the last subscriber also "
        "includes the clients' reading of thousands of sockets, which differs with how the server's writes "
        "reach them.",
    ),
    "echo": (
        "echo",
        "Each echoed message costs asok_green a wake-up of the read watcher, a switch to a reader greenlet "
        "(its C stack copied in and out), a `recv`, the frame parser and unmasking in Python, the handler "
        "call, a `send`, and then the reader's wait for the client's next message (one timer per reader "
        "greenlet, restarted for each wait). picows parses frames in Cython and calls its listener from the "
        "event loop with no coroutine or greenlet switch; aiohttp parses in C (its `_websocket` reader). The "
        "switches and the Python parser cannot be closed in pure Python on gevent.",
    ),
    "handshakes": (
        "handshakes",
        "Each handshake costs asok_green an accept, a new greenlet, gevent-pywsgi's `WSGIHandler` (its "
        "`__init__` makes an `rfile` with `socket.makefile`, its `handle` and `handle_one_request` layers, "
        "a read `Timeout`), the request head parsed once in Python, the SHA-1 accept key, the 101 in one "
        "`send` on the kernel socket, the "
        "`Connection` and its registration, and at the close the echoed close frame and the teardown. "
        "socketify and granian do all of it in C++ or Rust and call Python once per connection; picows in "
        "Cython; aiohttp parses the request in C (`_http_parser`). The samples on `SocketMixin.send` are the "
        "101's `send`: on loopback it runs the client's side of TCP and wakes the client, which then often "
        "takes the core (py-spy counts the wait). The Python part is spread over many steps, none above a "
        "few per cent; *Proposed changes* lists the ones that can go.",
    ),
    "latency": (
        None,
        "Clients within the p95 limit follow from the CPU each delivery costs while the broadcast requests "
        "keep coming (the figures above; the latency section's profile shows where asok_green's goes: the "
        "`send` calls of `Outbound._enqueue` and `Outbound.uncork`, the Python around them a tenth of the "
        "samples or so). socketify's pub/sub queues what "
        "is published to a topic during one loop iteration and writes it to each subscriber once; asok_green "
        "sends the first broadcast of a loop turn at once and coalesces only those after it, so when several "
        "requests arrive in one turn each client gets two writes where uWS makes one (*Proposed changes*). "
        "The rest of the gap is uWS's C++ loop over the subscribers against a Python one: that part cannot "
        "be closed in pure Python.",
    ),
}

#: Changes the profiles point at and not made yet, with the file they are in (each small, and each keeps the
#: coalescing, the bounded queues and the lean upgrade path). The reader's one timer and the one-send 101
#: that were proposed here are in the server now.
PROPOSALS = (
    "**No pywsgi `WSGIHandler` for an upgrade** (`asok_green/server/handler.py`): the lean path already "
    "parses the head itself; building the handler (`socket.makefile` for `rfile`, the request-line "
    "`Timeout`, the `handle`/`handle_one_request` layers) only to leave it is 5 to 10% of the "
    "handshake profile. Reading the head straight from the accepted socket and handing pywsgi only what is "
    "not a well-formed upgrade closes most of the gap to aiohttp; the gap to picows, granian and socketify "
    "(native parsers) stays.",
    "**Cork the first broadcast of a loop turn too when more reads are queued** (`asok_green/server/hub.py`, "
    "`Hub.fan_out`): the first broadcast goes straight out so that a lone message waits for nothing; when "
    "the read queue (`readers.READS`) already holds more connections to serve in this turn, holding it with "
    "the others gives each subscriber one write per turn instead of two, as uWS's pub/sub does. Not "
    "measured here: it is what the latency profile and socketify's CPU per delivery point at.",
    "**A lean supervisor for `--workers`** (`asok_green/process/cli.py`, `supervisor.py`): the parent is the "
    "`asok` command itself, with Asok imported, about 44 MB of RSS to watch the workers. Exec'ing "
    "`python -m asok_green.process.supervisor` measures 25 MB as its imports stand (gevent comes in with the "
    "constants it takes from the server and cluster layers) and near 11 MB, a bare interpreter, with those "
    "constants where importing them pulls in nothing: 20 to 30 MB off the total of the 100,000 row.",
)


def proposals() -> str:
    """``## Proposed changes``: what the profiles point at, file by file."""
    return "## Proposed changes (from the profiles)\n\n" + "\n".join(
        f"{n}. {item}" for n, item in enumerate(PROPOSALS, 1)
    )


def _family(key: str) -> str:
    if key.startswith("idle-"):
        return "idle"
    if key.startswith("fanout-"):
        return "fanout"
    if key.startswith("echo"):
        return "echo"
    if key.startswith("handshake"):
        return "handshakes"
    return key


def section(run: dict, profile_lines) -> str:
    """``## Where a peer beats asok_green``: every row asok_green is not the best of, grouped by cause."""
    green = peer(run, GREEN)
    if green is None:
        return ""
    behind: dict[str, list[str]] = {}
    for entry in ranking(run):
        row, best = entry["row"], entry["best"]
        ratio = entry["ratios"].get(GREEN)
        if best is None or best == GREEN or ratio is None:
            continue
        theirs = peer(run, best)["label"]
        behind.setdefault(_family(row.key), []).append(
            f"{row.label}: {theirs} {row.fmt.format(entry['values'][best])}, asok_green "
            f"{row.fmt.format(entry['values'][GREEN])} ({ratio:.2f}x)"
        )
    if not behind:
        return "## Where a peer beats asok_green\n\nNowhere in this run."
    out = ["## Where a peer beats asok_green"]
    for family, lines in behind.items():
        profile_key, cause = CAUSES.get(family, (None, ""))
        if family == "latency":
            lines.append(_latency_cpu(run))
        text = "\n".join(f"- {line}" for line in lines) + "\n\n" + cause
        if profile_key:
            profile = (green.get("profiles") or {}).get(profile_key)
            text += "\n\nThe profile of asok_green under that load:\n\n" + profile_lines(profile, 8)
        out.append(f"### {family}\n\n{text}")
    return "\n\n".join(out)


def _latency_cpu(run: dict) -> str:
    """Server CPU per delivered message in the latency test, median over each peer's steps."""
    import statistics

    figures = []
    for result in (run.get("latency") or {}).get("peers", []):
        cpu = [s["cpu_us_per_msg"] for p in result["passes"] for s in p["steps"] if s.get("cpu_us_per_msg")]
        if cpu:
            figures.append((statistics.median(cpu), result["label"]))
    figures.sort()
    return "server CPU per delivered message over the steps, median: " + ", ".join(
        f"{label} {value:.1f} us" for value, label in figures
    )
