"""The floor on this machine: the system calls of a fan-out and of a handshake, with nothing else around them.

benchlib/floor.c, compiled with ``cc`` into the work dir: one 150-byte frame
``send()`` to each of N loopback sockets (the other ends held by a child process
that never reads), and handshakes reduced to accept, recv, send of a precomputed
101, recv of the close frame, send of the close, close. Server CPU is the C
process's own (user + system; on loopback a ``send`` also runs the receiving
side of TCP in the sender's context, as it does for every peer).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

SOURCE = pathlib.Path(__file__).with_name("floor.c")


def build(work: pathlib.Path) -> pathlib.Path | str:
    """The compiled program, or why there is none."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler (cc) on this machine"
    binary = work / "floor"
    done = subprocess.run([cc, "-O2", "-o", str(binary), str(SOURCE)], capture_output=True, text=True)
    if done.returncode:
        return f"cc failed: {done.stderr.strip()[:300]}"
    return binary


def _run(binary: pathlib.Path, *args: object) -> dict:
    done = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=300)
    if done.returncode:
        return {"error": done.stderr.strip()[:300] or f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(work: pathlib.Path, fanout_sizes: list[int], handshakes: int, rounds: int = 10, passes: int = 3) -> dict:
    """Fan-out floor at each size and the handshake floor: the median of ``passes`` runs each."""
    binary = build(work)
    if isinstance(binary, str):
        return {"error": binary}
    out: dict = {"fanout": {}, "handshake": None}
    for size in fanout_sizes:
        runs = [_run(binary, "fanout", size, rounds) for _ in range(passes)]
        good = sorted((r for r in runs if "error" not in r), key=lambda r: r["cpu_us_per_msg"])
        out["fanout"][str(size)] = good[len(good) // 2] if good else runs[0]
    runs = [_run(binary, "handshake", handshakes) for _ in range(passes)]
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["cpu_us_each"])
    out["handshake"] = good[len(good) // 2] if good else runs[0]
    return out
