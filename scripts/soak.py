"""Soak asok_green: held connections, churn, broadcasts and hostile clients for minutes; does it come back?

    python scripts/soak.py                          # 5 minutes, 10,000 held, 500 connects/s (~7 minutes)
    python scripts/soak.py --minutes 1 --markdown /tmp/soak.md
    python scripts/soak.py --quick                  # seconds, a few dozen connections (smoke test)

asok_green serves a generated Asok project (``asok serve --gevent``, DEBUG
off) with three extra routes (benchlib/soakproject.py): ``/soak/room`` for
subscribers and broadcasts, ``/soak/echo`` for the hostile clients, and
``/soak/stats``, where the server reports its live greenlets and the messages
its handlers ran for. RSS and open files come from /proc.

The run, on 127.0.0.x only:

1. ``--connections`` connections held on /soak/room by loadgen processes
   (5,000 each at most); a broadcast every ``--interval`` seconds to them
   (a tick is skipped while the previous broadcast is unfinished). Measured:
   the baseline.
2. For ``--minutes``: ``--churn`` connections a second opened, held a second,
   then closed (half with a close frame, half reset with SO_LINGER 0); and
   three hostile clients (benchlib/hostile.py), reconnecting whenever the
   server drops them: a flooder (7-byte frames, as fast as it can), a sender
   of empty continuation frames (``--fragment-rate`` a second) and a
   subscriber that never reads. Measured at warm-up (``--warmup``) and at
   the end.
3. Churn and hostile clients stop; the held connections stay. Measured
   "after churn" once the server's open files settle, then a last broadcast
   checks that every held connection still gets it.
4. The held connections close. Measured "after disconnect".

Targets: after the churn, open files and greenlets back to the baseline (2 of
slack for the measurement's own connection), RSS within 5% of its warm-up
value (and at the end of the churn, against a slow leak), every held
connection still open and reached by the last broadcast, no "Traceback" in
the server's log. ``--markdown PATH`` writes the
results (with the machine and date) as a block for RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import load, machine, procstat
from benchlib.hostile import HostileProcess
from benchlib.latency import fmt_ms, percentile
from benchlib.scenario import progress
from benchlib.servers import PEERS_BY_NAME, SCRIPTS, ServerProcess, start_server
from benchlib.soakproject import make_soak_project, server_stats
from benchlib.wsclient import OP_TEXT, RawClient, client_frame, split_frames

MIB = 1 << 20
SLACK = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the churn phase")
    parser.add_argument("--connections", type=int, default=10_000, help="connections held throughout")
    parser.add_argument("--churn", type=float, default=500.0, help="connections opened (and closed) per second")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between broadcasts")
    parser.add_argument("--warmup", type=float, help="seconds into the churn of the warm-up measurement")
    parser.add_argument("--flood-rate", type=float, default=0.0, help="flooder frames/s (0: as fast as it can)")
    parser.add_argument("--fragment-rate", type=float, default=10_000.0, help="empty continuation frames/s")
    parser.add_argument("--no-hostile", action="store_true", help="churn and broadcasts only")
    parser.add_argument("--quick", action="store_true", help="20 s, 200 held, 50 connects/s (smoke test)")
    parser.add_argument("--markdown", help="write the results as a Markdown block here")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--workdir", help="project and server log (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.connections, args.churn = 1 / 3, 200, 50.0
    if args.warmup is None:
        args.warmup = min(60.0, args.minutes * 60 / 4)
    return args


class Broadcaster(threading.Thread):
    """Asks /soak/room for one small broadcast every ``interval`` seconds, while the previous one is done.

    A tick that finds the previous broadcast unanswered is skipped (and
    counted): the load stays what the server can do, and a request queue
    cannot build up behind one connection.
    """

    def __init__(self, server: ServerProcess, interval: float, size: int = 64):
        super().__init__(daemon=True)
        self.client = RawClient(server.port, "/soak/room", server.origin)
        self.interval, self.request = interval, client_frame(OP_TEXT, f"!bcast 1 {size}".encode())
        self.ticking = threading.Event()
        self.ticking.set()
        self.stopping = threading.Event()
        self.counts = collections.Counter()
        self.outstanding: collections.deque = collections.deque()
        self.latencies: list[float] = []

    def run(self) -> None:
        next_tick = time.monotonic()
        while not self.stopping.is_set() and not self.client.eof:
            now = time.monotonic()
            if now >= next_tick:
                next_tick = max(next_tick + self.interval, now)
                if not self.ticking.is_set():
                    pass
                elif self.outstanding:
                    self.counts["skipped"] += 1
                elif self.client.send_all(self.request, now + 1.0):
                    self.outstanding.append(now)
                    self.counts["sent"] += 1
            self.client.read_some(deadline=next_tick)
            for opcode, payload in split_frames(self.client.buf):
                if opcode == OP_TEXT and payload.startswith(b"!done") and self.outstanding:
                    self.counts["done"] += 1
                    self.latencies.append(time.monotonic() - self.outstanding.popleft())

    def summary(self) -> dict:
        """Broadcasts asked for, answered, skipped; p50 and p99 of the answer time."""
        ordered = sorted(self.latencies)
        return dict(self.counts) | {
            "p50_ms": percentile(ordered, 0.5) * 1000,
            "p99_ms": percentile(ordered, 0.99) * 1000,
        }

    def stop(self) -> None:
        """Stop and close the connection."""
        self.stopping.set()
        self.join(5)
        self.client.close()


def snapshot(server: ServerProcess, label: str, started: float) -> dict:
    """RSS and open files from /proc, greenlets and counts from /soak/stats (None if it did not answer)."""
    alive = server.alive()
    point = {
        "label": label,
        "t": round(time.monotonic() - started, 1),
        "rss": procstat.rss_bytes(server.pid) if alive else None,
        "files": procstat.open_files(server.pid) if alive else None,
    }
    stats = server_stats(server.port, server.origin, timeout=30) if alive else None
    point.update(stats or {"greenlets": None, "handled": None, "connections": None, "broadcasts": None})
    progress(f"{label}: {describe(point)}")
    return point


def describe(point: dict) -> str:
    """One line for a progress message."""
    rss = f"{point['rss'] / MIB:.1f} MiB" if point["rss"] is not None else "-"
    return (
        f"RSS {rss}, open files {point['files']}, greenlets {point['greenlets']}, "
        f"connections {point['connections']}, handled {point['handled']}"
    )


def settle(server: ServerProcess, timeout: float = 40.0) -> float:
    """Wait until the server's open files stop changing (3 equal readings 1 s apart); seconds waited."""
    started, last, same = time.monotonic(), None, 0
    while time.monotonic() - started < timeout and server.alive():
        files = procstat.open_files(server.pid)
        same = same + 1 if files == last else 0
        if same >= 2:
            break
        last = files
        time.sleep(1)
    procstat.wait_idle(server.pid, timeout=10)
    return time.monotonic() - started


def start_hostile(server: ServerProcess, args: argparse.Namespace, seconds: float) -> list[HostileProcess]:
    """The flooder, the empty-continuation sender and the non-reader, each reconnecting until ``seconds``."""
    if args.no_hostile:
        return []
    common = ["--seconds", str(seconds), "--reconnect"]
    flood_rate = ["--rate", str(args.flood_rate)] if args.flood_rate else []
    return [
        HostileProcess(
            "flood", server.port, "/soak/echo", server.origin, *common, *flood_rate, "--source", "127.0.0.200"
        ),
        HostileProcess(
            "fragments", server.port, "/soak/echo", server.origin, *common, "--rate", str(args.fragment_rate)
        ),
        HostileProcess("nonreader", server.port, "/soak/room", server.origin, *common, "--source", "127.0.0.202"),
    ]


def start_churn(server: ServerProcess, args: argparse.Namespace, seconds: float) -> subprocess.Popen:
    """The churn process (benchlib/churn.py); its result is its last stdout line."""
    argv = [sys.executable, "-m", "benchlib.churn", "--url", server.ws_url("/soak/room"), "--origin", server.origin]
    argv += ["--rate", str(args.churn), "--seconds", str(seconds)]
    return subprocess.Popen(argv, cwd=SCRIPTS, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


def churn_result(proc: subprocess.Popen, timeout: float) -> dict:
    """The churn's JSON result (``{"error": ...}`` if it gave none)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"no result (exit {proc.returncode})"}


def soak(server: ServerProcess, args: argparse.Namespace, started: float) -> dict:
    """Phases 1 to 4 of the module docstring; the measurements and what the clients saw."""
    points = [snapshot(server, "empty server", started)]
    lifetime = args.minutes * 60 + 600  # outlives the run: the holders must not leave on their own
    holders = load.Holders(
        server.ws_url("/soak/room"), server.origin, load.SourceAddresses(), most=args.connections, max_seconds=lifetime
    )
    result: dict = {"points": points}
    try:
        holders.grow(args.connections, open_timeout=180)
        result["held"] = {"open": holders.open, "failed": holders.failed, "errors": holders.errors}
        progress(f"held {holders.open:,} connections ({holders.failed} failed)")
        broadcaster = Broadcaster(server, args.interval)
        broadcaster.start()
        time.sleep(3)
        settle(server, timeout=20)
        points.append(snapshot(server, "baseline (held, broadcasts)", started))
        seconds = args.minutes * 60
        churn_started = time.monotonic()
        churn = start_churn(server, args, seconds)
        hostile = start_hostile(server, args, seconds)
        progress(f"churn {args.churn:g}/s and {len(hostile)} hostile clients for {seconds:.0f} s")
        time.sleep(max(0.0, churn_started + args.warmup - time.monotonic()))
        points.append(snapshot(server, "warm-up", started))
        time.sleep(max(0.0, churn_started + seconds - 2 - time.monotonic()))
        points.append(snapshot(server, "end of churn", started))
        result["churn"] = churn_result(churn, timeout=60)
        result["hostile"] = {h.mode: (h.result(timeout=30) or {"error": "no result"}) for h in hostile}
        for h in result["hostile"].values():
            h.pop("runs", None)
        broadcaster.ticking.clear()
        time.sleep(1)
        settle(server)
        points.append(snapshot(server, "after churn (held still open)", started))
        broadcaster.stop()
        result["broadcasts"] = broadcaster.summary()
        result["delivery"] = last_broadcast(server, holders)
        progress(f"last broadcast reached {result['delivery']['complete']:,} of {result['delivery']['armed']:,}")
        result["held"]["still_open"] = holders.still_open()
    finally:
        holders.close()
    settle(server)
    points.append(snapshot(server, "after disconnect", started))
    return result


def last_broadcast(server: ServerProcess, holders: load.Holders) -> dict:
    """One more broadcast: how many held connections get it."""
    armed = holders.arm(99, 1)
    try:
        control = load.ControlClient(server.port, server.origin, path="/soak/room", timeout=30)
        done = control.broadcast(1, 64, timeout=30)
        control.close()
    except OSError:
        done = False
    complete, _ = holders.collect(timeout=30)
    return {"armed": armed, "complete": complete, "done": done}


def check(result: dict) -> list[tuple[str, str, bool]]:
    """The targets: (what, measured, met?)."""
    by_label = {p["label"].split(" (")[0]: p for p in result["points"]}
    base, warm, after = by_label["baseline"], by_label["warm-up"], by_label["after churn"]
    end = by_label["end of churn"]
    checks = []
    for key, name in (("files", "open files"), ("greenlets", "greenlets")):
        if base[key] is None or after[key] is None:
            checks.append((f"{name} back to the baseline", "not measured (server did not answer)", False))
        else:
            checks.append(
                (
                    f"{name} back to the baseline",
                    f"{after[key]:,} vs {base[key]:,}",
                    abs(after[key] - base[key]) <= SLACK,
                )
            )
    for point, name in ((after, "RSS after churn within 5% of warm-up"), (end, "RSS at the end within 5% of warm-up")):
        if warm["rss"] and point["rss"]:
            change = point["rss"] / warm["rss"] - 1
            rss = f"{point['rss'] / MIB:.1f} MiB vs {warm['rss'] / MIB:.1f} MiB ({change:+.1%})"
            checks.append((name, rss, abs(change) <= 0.05))
    delivery = result.get("delivery")
    if delivery is not None:
        reached = f"{delivery['complete']:,} of {result['held']['open']:,}"
        checks.append(("every held connection still served after the churn", reached, _all_served(result)))
    tracebacks = result["tracebacks"]
    checks.append(("no Traceback in the server log", str(tracebacks), tracebacks == 0))
    return checks


def _all_served(result: dict) -> bool:
    held = result["held"]
    return held["open"] > 0 and result["delivery"]["complete"] == held["open"] == held.get("still_open")


def markdown(run: dict) -> str:
    """The results as a Markdown block for RELIABILITY.md."""
    m, args, result = run["machine"], run["options"], run["result"]
    lines = [
        f"Run {run['date']}: `{run['command'].strip()}` ({run['seconds']:.0f} s in all). Machine: "
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"open files {m['open_files']}, load before {m['load_before']:.2f}.",
        f"Load: {args['connections']:,} held, {args['churn']:g} connects/s for {args['minutes'] * 60:.0f} s, "
        f"a broadcast every {args['interval'] * 1000:.0f} ms"
        + ("" if args["no_hostile"] else ", a flooder, an empty-continuation sender and a non-reader throughout")
        + ".",
        "",
        "| when | t (s) | RSS MiB | open files | greenlets | connections | messages handled |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result.get("points", []):
        rss = f"{p['rss'] / MIB:.1f}" if p["rss"] is not None else "-"
        cells = [p["label"], str(p["t"]), rss] + [_n(p[k]) for k in ("files", "greenlets", "connections", "handled")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {line}" for line in clients_summary(result))]
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {'met' if ok else 'NOT met'} |" for what, value, ok in run["checks"]]
    return "\n".join(lines) + "\n"


def _n(value) -> str:
    return "timeout" if value is None else f"{value:,}"


def clients_summary(result: dict) -> list[str]:
    """What the clients saw, one line each."""
    out = []
    held = result.get("held", {})
    if held:
        out.append(
            f"held: {held['open']:,} opened ({held['failed']} failed), {held.get('still_open', 0):,} open at the end"
        )
    c = result.get("churn", {})
    if c:
        out.append(
            "churn: "
            + (
                c["error"]
                if "error" in c
                else f"{c.get('opened', 0):,} opened ({c['rate']}/s), {c.get('failed', 0):,} failed, "
                f"{c.get('skipped', 0):,} skipped (handshakes pending), {c.get('closed_clean', 0):,} closed with a "
                f"close frame, {c.get('reset', 0):,} reset, {c.get('close_timeouts', 0):,} close timeouts, "
                f"{c.get('dropped_by_server', 0) + c.get('closed_by_server', 0):,} dropped by the server"
            )
        )
    b = result.get("broadcasts")
    if b:
        out.append(
            f"broadcasts: {b.get('sent', 0):,} asked, {b.get('done', 0):,} done, {b.get('skipped', 0):,} ticks "
            f"skipped (previous one not done); answer p50 {fmt_ms(b['p50_ms'])} ms, p99 {fmt_ms(b['p99_ms'])} ms"
        )
    d = result.get("delivery")
    if d:
        out.append(f"last broadcast after the churn: reached {d['complete']:,} of {d['armed']:,} held connections")
    for mode, h in result.get("hostile", {}).items():
        if "error" in h:
            out.append(f"{mode}: {h['error']}")
        else:
            extra = f", {h['handled']:,} echoed" if mode == "flood" else ""
            out.append(
                f"{mode}: {h['connections']} connections ({h['refused']} attempts failed), "
                f"{h['closed_by_server']} dropped by the server, {h['sent']:,} frames sent{extra}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the results, write the files asked for; 0 when it ran (targets are reported)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="asok-soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    described = machine.describe()  # before the load: it records the load average
    progress(f"work dir {work}")
    project = make_soak_project(work / "project")
    server = start_server(PEERS_BY_NAME["asok_green"], project, work, tag="-soak")
    limit = procstat.open_files_limit(server.pid)
    progress(f"asok_green started (pid {server.pid}, open files limit {limit})")
    if limit is not None and limit < args.connections + 2 * args.churn + 100:
        progress(f"WARNING: the server may open {limit} files: fewer than the connections this soak makes")
    try:
        urllib.request.urlopen(server.http_url + "/whoami", timeout=10).read()
        result = soak(server, args, started)
    finally:
        alive = server.alive()
        server.stop()
    result["server_alive_at_end"] = alive
    result["tracebacks"] = server.log.read_text(errors="replace").count("Traceback")
    run = {
        "machine": described,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python scripts/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "options": {k: v for k, v in vars(args).items() if k not in ("markdown", "json", "workdir")},
        "seconds": time.monotonic() - started,
        "result": result,
    }
    run["checks"] = check(result)
    text = markdown(run)
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
