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
        "An idle asok_green connection is a socket object, its read watcher, a `Connection` with its parsed "
        "request head, and the hub's entries (see *Idle memory: what a connection is made of*): about 2 KB of "
        "Python objects, no greenlet. socketify holds a connection in uWS's C++ structures (a few hundred "
        "bytes) and Python sees it only when a callback runs; picows and the asyncio peers hold a transport "
        "object and a protocol object per connection, as compact or less than ours. Closing the gap to "
        "socketify is not possible in pure Python: every Python object costs at least its header, and a "
        "gevent socket is three of them (the socket, the `_socket.socket` and its watchers).",
    ),
    "fanout": (
        "fanout",
        "A broadcast is one `send` system call per subscriber (the frame is encoded once and the hub "
        "coalesces the messages of one loop turn into one write per connection): nearly every sample is in "
        "the line that makes that call (`_enqueue`), that is, in the kernel. The floor below (the same "
        "`send` loop in C) bounds what any peer can do; asok_green's CPU per delivery is within a small "
        "factor of it, and the rest is the Python loop over the subscribers and the per-connection send "
        "queue check, which keeps a slow client from blocking the others (a bounded queue each).",
    ),
    "echo": (
        "echo",
        "Each echoed message costs asok_green a wake-up of the read watcher, a switch to a reader "
        "greenlet (its C stack copied in and out), the frame parser and the unmasking in Python, the "
        "handler call and a `send`; picows parses frames in Cython and calls its listener straight from "
        "the event loop, with no coroutine or greenlet switch. The switches and the Python parser are the "
        "part that cannot be closed in pure Python on gevent; unmasking is already done on whole "
        "buffers at once.",
    ),
    "handshakes": (
        "handshakes",
        "Each handshake costs asok_green an accept, a new greenlet, pywsgi's handler object, the request "
        "head parsed once in Python, the SHA-1 accept key, the 101 in one `sendall`, the `Connection` and "
        "its registration, and at the close the echoed close frame and the teardown. socketify and "
        "granian do all of this in C++ or Rust and call Python once (or not at all) per connection; the "
        "floor below is the system calls alone. The Python part is what is left to shave, and it is "
        "spread over many small steps (no one line above a few per cent).",
    ),
    "latency": (
        None,
        "Clients within the p95 limit follow from the fan-out cost and from how fast the server gets "
        "back to reading: with a few thousand clients, a broadcast round is thousands of `send` calls, "
        "and the server must also keep answering the senders; the peers that keep up longer do the "
        "sends in native code.",
    ),
}


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
        text = "\n".join(f"- {line}" for line in lines) + "\n\n" + cause
        if profile_key:
            profile = (green.get("profiles") or {}).get(profile_key)
            text += "\n\nThe profile of asok_green under that load:\n\n" + profile_lines(profile, 8)
        out.append(f"### {family}\n\n{text}")
    return "\n\n".join(out)
