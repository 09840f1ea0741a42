"""Hostile clients against asok_green and its peers: does one client hurt the others, or the server?

    python scripts/adversary.py                         # every attack on every server (a few minutes)
    python scripts/adversary.py --quick                 # small counts, short windows (seconds)
    python scripts/adversary.py --servers asok_green --attacks flood --seconds 10

Servers: asok_green as users serve it (``asok serve --gevent`` on a generated
Asok project, DEBUG off), websockets (asyncio) and bare gevent-websocket
(scripts/peers/), each started afresh for every attack, on 127.0.0.1 only.

Attacks (one table row each):

``flood``
    a probe client sends "whoami N" on /echo and waits for its echo, quiet,
    then while another process floods /echo with 7-byte masked text frames
    as fast as the socket takes them (reading its echoes, which count as the
    messages the server handled). The flooder runs alone for a moment first,
    so its rate alone and its rate beside the probe can be compared: its
    share. Target for asok_green: flood p99 <= 100 ms and <= 3x quiet p99,
    flooder share >= 50%.
``fragments``
    a text message that never ends: its first frame, then empty continuation
    frames; the server's RSS growth after them.
``pings``
    ping frames from a client that never reads; the server's RSS growth.
``slow``
    a /room subscriber with a 4 KiB receive buffer stops reading while the
    room gets a large broadcast: did the other subscribers get every
    message, and what did the stuck one receive (whole messages in order,
    then a close frame, or a broken stream)?
``smuggle``, ``malformed``, ``stalled``, ``cut_short``, ``name_storm``, ``nested_json``
    the untrusted edge (benchlib/edge.py): ambiguous framing, malformed
    heads, stalled and cut-short bodies, a storm of new room names, nested
    JSON; each beside a probe client, with the server's RSS before and after.
    The edge run of RELIABILITY.md::

        python scripts/adversary.py --servers asok_green,uvicorn_h11,gevent_websocket \
            --attacks smuggle,malformed,stalled,cut_short,name_storm,nested_json

Every wait has a timeout: a server that stalls is reported ("timeout"), not
waited for. Results are printed as a table; ``--markdown`` and ``--json``
write them to files as well.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import signal
import sys
import tempfile
import time

from benchlib import load, machine, procstat
from benchlib.edge import EDGE_ATTACKS, edge_rows, make_adversary_project, run_edge_attack
from benchlib.hostile import HostileProcess, fragments, pings, read_rest
from benchlib.latency import fmt_ms, round_trips, summary
from benchlib.profiling import Recording
from benchlib.scenario import progress
from benchlib.servers import PEERS_BY_NAME, ServerProcess, start_server
from benchlib.wsclient import RawClient, Timeout

DEFAULT_SERVERS = "asok_green,websockets_asyncio,gevent_websocket"
#: What runs without ``--attacks``; the edge attacks are asked for by name (stalled bodies take 30 s a server).
DEFAULT_ATTACKS = ("flood", "fragments", "pings", "slow")
ATTACKS = (*DEFAULT_ATTACKS, *EDGE_ATTACKS)
MIB = 1 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts and short windows (smoke test)")
    parser.add_argument("--servers", default=DEFAULT_SERVERS, help=f"comma-separated, of: {','.join(PEERS_BY_NAME)}")
    parser.add_argument(
        "--attacks", default=",".join(DEFAULT_ATTACKS), help=f"comma-separated, of: {','.join(ATTACKS)}"
    )
    parser.add_argument("--seconds", type=float, help="flood window in seconds (default 8; --quick 3)")
    parser.add_argument("--probes", type=int, help="round trips per phase at most (default 400; --quick 60)")
    parser.add_argument("--probe-timeout", type=float, default=2.0, help="seconds one round trip may take")
    parser.add_argument("--frames", type=int, help="empty continuation frames (default 2,000,000; --quick 100,000)")
    parser.add_argument("--pings", type=int, help="pings sent without reading (default 200,000; --quick 20,000)")
    parser.add_argument("--broadcast", default="4000x2000", help="slow: COUNTxSIZE broadcast to the room")
    parser.add_argument("--readers", type=int, help="slow: subscribers that keep reading (default 20; --quick 3)")
    parser.add_argument("--stalled", type=int, help="stalled: bodies at once (default 2,000; --quick 200)")
    parser.add_argument("--stall-wait", type=float, default=30.0, help="stalled: seconds to wait for the server")
    parser.add_argument("--names", type=int, help="name_storm: new rooms (default 40,000; --quick 4,000)")
    parser.add_argument("--nested", type=int, help="nested_json: messages of each kind (default 1,000; --quick 100)")
    parser.add_argument("--profile", action="store_true", help="flood: py-spy profile of each server beside the probe")
    parser.add_argument("--markdown", help="write the results as a Markdown block here")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--workdir", help="project and server logs (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    defaults = {"seconds": (8.0, 3.0), "probes": (400, 60), "frames": (2_000_000, 100_000), "pings": (200_000, 20_000)}
    defaults["readers"] = (20, 3)
    defaults |= {"stalled": (2000, 200), "names": (40_000, 4_000), "nested": (1000, 100)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    unknown = {s for s in args.servers.split(",")} - set(PEERS_BY_NAME)
    unknown |= {a for a in args.attacks.split(",")} - set(ATTACKS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    return args


# -- the attacks -------------------------------------------------------------------


def attack_flood(server: ServerProcess, args: argparse.Namespace) -> dict:
    """Probe round trips quiet, then beside a flooder; the flooder's rate alone and beside the probe."""
    probe = RawClient(server.port, "/echo", server.origin)
    gap = 0.005
    quiet = summary(round_trips(probe, args.probes, gap=gap, timeout=args.probe_timeout))
    solo = min(1.5, args.seconds / 4)
    flooder = HostileProcess("flood", server.port, "/echo", server.origin, "--seconds", str(args.seconds))
    try:
        opened = flooder.wait("open", 15)
        if opened is None:
            return {"quiet": quiet, "error": "the flooder could not connect"}
        flood_end = opened["t"] + args.seconds
        time.sleep(max(0.0, opened["t"] + solo - time.monotonic()))
        probe_start = time.monotonic()
        recording = None
        if args.profile:
            path = server.log.with_suffix(".flood-profile.txt")
            recording = Recording(server.pid, flood_end - probe_start - args.probe_timeout / 2, path)
        loaded = round_trips(
            probe, args.probes, gap=gap, timeout=args.probe_timeout, stop_at=flood_end - args.probe_timeout / 2
        )
        probe_end = time.monotonic()
        result = flooder.result(args.seconds + 30)
        profile = recording.finish() if recording is not None else None
    finally:
        flooder.stop()
        probe.close(reset=True)
    row = {"quiet": quiet, "flood": summary(loaded)}
    if args.profile:
        row["profile"] = profile or {"error": "py-spy is not installed"}
    if result is None or not result.get("runs"):
        row["error"] = "the flooder gave no result"
        return row
    run = result["runs"][0]
    row["flooder"] = flooder_rates(run, probe_start, probe_end)
    return row


def flooder_rates(run: dict, probe_start: float, probe_end: float) -> dict:
    """Messages handled per second alone (after its first bin) and while the probe ran; its share."""
    bins, width, t0 = run["bins"], run["bin"], run["started"]
    first_probe_bin = int((probe_start - t0) / width)
    last_probe_bin = int((probe_end - t0) / width)
    alone = bins[1:first_probe_bin]
    beside = bins[first_probe_bin + 1 : last_probe_bin]
    rate_alone = sum(alone) / (len(alone) * width) if alone else math.nan
    rate_beside = sum(beside) / (len(beside) * width) if beside else math.nan
    return {
        "sent": run["sent"],
        "handled": run["handled"],
        "seconds": run["seconds"],
        "rate_alone": rate_alone,
        "rate_beside": rate_beside,
        "share": rate_beside / rate_alone if rate_alone else math.nan,
        "closed": run["closed"],
    }


def attack_fragments(server: ServerProcess, args: argparse.Namespace) -> dict:
    """RSS growth after a never-ending message of empty continuation frames."""
    client = RawClient(server.port, "/echo", server.origin)
    procstat.wait_idle(server.pid, timeout=10)
    before = procstat.rss_bytes(server.pid)
    sent = fragments(client, seconds=max(30.0, args.seconds * 4), count=args.frames)
    procstat.wait_idle(server.pid, timeout=30)
    after = procstat.rss_bytes(server.pid) if server.alive() else before
    client.close(reset=True)
    return {"frames": sent["sent"], "wire_mib": sent["sent"] * 6 / MIB, "rss_growth_mib": (after - before) / MIB} | {
        "closed": sent["closed"],
        "timeout": sent["timeout"],
    }


def attack_pings(server: ServerProcess, args: argparse.Namespace) -> dict:
    """RSS growth after pings from a client that reads nothing; then what it finds when it reads."""
    client = RawClient(server.port, "/echo", server.origin, rcvbuf=4096)
    procstat.wait_idle(server.pid, timeout=10)
    before = procstat.rss_bytes(server.pid)
    sent = pings(client, seconds=max(20.0, args.seconds * 3), count=args.pings)
    procstat.wait_idle(server.pid, timeout=30)
    after = procstat.rss_bytes(server.pid) if server.alive() else before
    rest = read_rest(client, idle=8.0, deadline=time.monotonic() + 30)  # past close_timeout
    client.close(reset=True)
    return {
        "pings": sent["sent"],
        "rss_growth_mib": (after - before) / MIB,
        "pongs_read": rest["frames"].get("10", 0),
        "close": rest["close"],
        "reason": rest["reason"],
        "timeout": sent["timeout"],
    }


def attack_slow(server: ServerProcess, args: argparse.Namespace) -> dict:
    """A stuck /room subscriber during a broadcast: the others' deliveries and what the stuck one got."""
    count, size = (int(n) for n in args.broadcast.split("x"))
    sources = load.SourceAddresses(first=60, last=90)
    holders = load.Holders(server.ws_url("/room"), server.origin, sources)
    stuck = None
    try:
        holders.grow(args.readers, open_timeout=20)
        stuck = RawClient(server.port, "/room", server.origin, rcvbuf=4096)
        control = load.ControlClient(server.port, server.origin, timeout=15)
        time.sleep(0.2)
        holders.arm(1, count)
        try:
            done = control.broadcast(count, size, timeout=max(15.0, args.seconds * 2))
        except OSError:
            done = False
        complete, _ = holders.collect(timeout=10 if done else 3)
        control.close()
        texts: list[bytes] = []
        rest = read_rest(stuck, idle=8.0, deadline=time.monotonic() + 30, texts=texts)  # past close_timeout
    finally:
        holders.close()
        if stuck is not None:
            stuck.close(reset=True)
    whole, in_order = stuck_messages(texts)
    return {
        "broadcast_done": done,
        "readers": args.readers,
        "readers_complete": complete,
        "count": count,
        "stuck_got": whole,
        "stuck_in_order": in_order,
        "stuck_close": rest["close"],
        "stuck_reason": rest["reason"],
        "stuck_leftover_bytes": rest["leftover_bytes"],
        "stuck_corrupt": rest["corrupt"] or not in_order or (rest["close"] == 1006 and rest["leftover_bytes"] > 0),
    }


def stuck_messages(texts: list[bytes]) -> tuple[int, bool]:
    """(broadcast messages received, whether they were whole and numbered 0, 1, 2... in order)."""
    expected = 0
    for text in texts:
        try:
            seq = json.loads(text)["seq"]
        except (ValueError, KeyError, TypeError):
            return expected, False
        if seq != expected:
            return expected, False
        expected += 1
    return expected, True


RUNNERS = {"flood": attack_flood, "fragments": attack_fragments, "pings": attack_pings, "slow": attack_slow}


# -- running ----------------------------------------------------------------------


def run_attack(name: str, attack: str, project: pathlib.Path, logs: pathlib.Path, args: argparse.Namespace) -> dict:
    """Start a fresh ``name`` server, run one attack on it, stop it; tracebacks in its log."""
    peer = PEERS_BY_NAME[name]
    try:
        server = start_server(peer, project, logs, tag=f"-{attack}")
    except (RuntimeError, OSError) as exc:
        return {"error": f"did not start: {exc}".splitlines()[0], "tracebacks": 0}
    progress(f"{peer.label}: {attack} (pid {server.pid})")
    try:
        row = run_edge_attack(attack, server, args) if attack in EDGE_ATTACKS else RUNNERS[attack](server, args)
    except (OSError, ConnectionError, Timeout) as exc:
        row = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        alive = server.alive()
        server.stop()
    row["server_alive"] = alive
    row["tracebacks"] = server.log.read_text(errors="replace").count("Traceback")
    return row


def run(args: argparse.Namespace, work: pathlib.Path) -> dict:
    """Every attack on every server; the results by server then attack."""
    described = machine.describe()  # before the load: it records the load average
    project = make_adversary_project(work / "project")
    results: dict = {}
    for name in args.servers.split(","):
        results[name] = {}
        for attack in args.attacks.split(","):
            results[name][attack] = run_attack(name, attack, project, work, args)
    return {
        "machine": described,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python scripts/adversary.py " + " ".join(sys.argv[1:]),
        "options": {k: v for k, v in vars(args).items() if k not in ("markdown", "json", "workdir")},
        "servers": results,
    }


# -- report -----------------------------------------------------------------------


def _label(name: str) -> str:
    return PEERS_BY_NAME[name].label


def _rate(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}/s"


def rows(report: dict) -> list[tuple[str, list[str]]]:
    """The table: (measurement, one cell per server)."""
    servers = report["servers"]
    names = list(servers)

    def cells(attack: str, cell) -> list[str]:
        out = []
        for name in names:
            row = servers[name].get(attack)
            if row is None:
                out.append("not run")
            elif "error" in row and not any(k in row for k in ("flood", "frames", "pings", "count")):
                out.append(row["error"])
            else:
                out.append(cell(row))
        return out

    table = [
        ("quiet round trip p50 / p99 / max, ms", cells("flood", lambda r: _trio(r["quiet"]))),
        ("under flood p50 / p99 / max, ms", cells("flood", lambda r: _trio(r["flood"]) if "flood" in r else "-")),
        ("under flood: round trips (timeouts)", cells("flood", lambda r: _count(r.get("flood")))),
        ("flood p99 / quiet p99", cells("flood", _ratio)),
        ("flooder handled alone / beside probe", cells("flood", _flooder)),
        ("flooder share (beside / alone)", cells("flood", _share)),
        ("fragments: RSS growth after N empty frames", cells("fragments", _fragments)),
        ("pings unread: RSS growth after N pings", cells("pings", _pings)),
        ("slow consumer: readers with every message", cells("slow", _readers)),
        ("slow consumer: what the stuck client got", cells("slow", _stuck)),
    ]
    table = [(what, row) for what, row in table if any(cell != "not run" for cell in row)]
    table += edge_rows(servers, names)
    table.append(("tracebacks in the server log", [str(_tracebacks(servers[n])) for n in names]))
    return table


def _tracebacks(by_attack: dict) -> int:
    return sum(row.get("tracebacks", 0) for row in by_attack.values())


def _trio(s: dict) -> str:
    return " / ".join(fmt_ms(s[k]) for k in ("p50_ms", "p99_ms", "max_ms"))


def _count(s: dict | None) -> str:
    return f"{s['n']} ({s['timeouts']})" if s else "-"


def _ratio(row: dict) -> str:
    if "flood" not in row:
        return "-"
    quiet, loaded = row["quiet"]["p99_ms"], row["flood"]["p99_ms"]
    if math.isinf(loaded):
        return "timeout"
    return f"{loaded / quiet:,.1f}x" if quiet else "-"


def _flooder(row: dict) -> str:
    f = row.get("flooder")
    if not f:
        return row.get("error", "-")
    closed = f", closed {f['closed']}" if f["closed"] else ""
    return f"{_rate(f['rate_alone'])} / {_rate(f['rate_beside'])}{closed}"


def _share(row: dict) -> str:
    f = row.get("flooder")
    return "-" if not f or math.isnan(f["share"]) else f"{f['share']:.0%}"


def _fragments(row: dict) -> str:
    closed = f"; closed {row['closed']}" if row["closed"] else ""
    stalled = "; send timed out" if row["timeout"] else ""
    return f"{row['rss_growth_mib']:+.1f} MiB after {row['frames']:,}{closed}{stalled}"


def _pings(row: dict) -> str:
    end = {None: "silence", 1006: "EOF without close"}.get(row["close"], f"close {row['close']}")
    stalled = " (server stopped reading)" if row["timeout"] else ""
    read = f"read back {row['pongs_read']:,} pongs, {end}"
    return f"{row['rss_growth_mib']:+.1f} MiB after {row['pings']:,}{stalled}; {read}"


def _readers(row: dict) -> str:
    done = "" if row["broadcast_done"] else " (broadcast timed out)"
    return f"{row['readers_complete']}/{row['readers']}{done}"


def _stuck(row: dict) -> str:
    close = {None: "no close", 1006: "no close frame (1006)"}.get(row["stuck_close"], f"close {row['stuck_close']}")
    reason = f" '{row['stuck_reason']}'" if row["stuck_reason"] else ""
    state = "corrupt stream" if row["stuck_corrupt"] else "whole, in order"
    return f"{row['stuck_got']:,}/{row['count']:,} msgs, {state}, {close}{reason}"


def targets(report: dict) -> list[tuple[str, str, bool | None]]:
    """The flood targets for asok_green: (what, measured, met?)."""
    row = report["servers"].get("asok_green", {}).get("flood")
    if not row or "flood" not in row:
        return []
    quiet, loaded = row["quiet"]["p99_ms"], row["flood"]["p99_ms"]
    share = row.get("flooder", {}).get("share", math.nan)
    return [
        ("p99 under flood <= 100 ms", fmt_ms(loaded) + ("" if math.isinf(loaded) else " ms"), loaded <= 100),
        ("p99 under flood <= 3x quiet p99", _ratio(row), loaded <= 3 * quiet),
        ("flooder share >= 50% of its rate alone", "-" if math.isnan(share) else f"{share:.0%}", share >= 0.5),
    ]


def markdown(report: dict) -> str:
    """The results as a Markdown block."""
    m = report["machine"]
    names = list(report["servers"])
    lines = [
        f"Run {report['date']}: `{report['command'].strip()}`; {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB, Python {m['python']}, load before {m['load_before']:.2f}.",
        "",
        "| | " + " | ".join(_label(n) for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {what} | " + " | ".join(cells) + " |" for what, cells in rows(report)]
    checks = targets(report)
    if checks:
        lines += ["", "| asok_green target | measured | |", "|---|---|---|"]
        lines += [f"| {what} | {value} | {'met' if ok else 'NOT met'} |" for what, value, ok in checks]
    found = profiles(report)
    if found:
        lines += ["", "```", *found, "```"]
    return "\n".join(lines) + "\n"


def profiles(report: dict, top: int = 8) -> list[str]:
    """Where each profiled server spent its time under flood: the top lines by self time."""
    out = []
    for name, attacks in report["servers"].items():
        profile = attacks.get("flood", {}).get("profile")
        if not profile:
            continue
        if "self" not in profile:
            out.append(f"{_label(name)}: no profile ({profile.get('error')})")
            continue
        out.append(f"{_label(name)} under flood, self time ({profile['samples']:,} py-spy samples):")
        out += [f"  {share:6.1%}  {where}" for where, share in profile["self"][:top]]
    return out


def text_table(report: dict) -> str:
    """The results as a plain-text table."""
    names = list(report["servers"])
    table = [("", [_label(n) for n in names]), *rows(report)]
    first = max(len(what) for what, _ in table)
    widths = [max(len(cells[i]) for _, cells in table) for i in range(len(names))]
    out = [f"{what:<{first}}  " + "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) for what, cells in table]
    checks = targets(report)
    if checks:
        out += ["", "Targets (asok_green):"]
        out += [f"  {what}: {value} -> {'met' if ok else 'NOT met'}" for what, value, ok in checks]
    found = profiles(report)
    if found:
        out += ["", *found]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the files asked for; 0 when every server ran."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="asok-adversary-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    progress(f"work dir {work}; servers {args.servers}; attacks {args.attacks}")
    try:
        report = run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(text_table(report))
    if args.markdown:
        pathlib.Path(args.markdown).write_text(markdown(report))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
