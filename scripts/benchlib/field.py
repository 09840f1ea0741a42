"""The field: every row against the best peer of that row, the strongest peers' targets, the floor, 100,000 idle.

The peers of the run are ranked row by row (lower is better for memory, CPU and
time; higher for rates and clients). A peer that could not run a row says why
in its cell. The floor (benchlib/floor.py) is not a peer: it is what the system
calls alone cost on this machine, and asok_green is given against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .targets import GREEN, KB, Verdict, fanout_at, idle_at, peer

#: Peers whose code runs in the Python interpreter (the issue's "Python-hosted" peers).
PYTHON_HOSTED = ("uvicorn_websockets", "uvicorn_wsproto", "aiohttp", "picows", "granian")
UVICORN_AIOHTTP = ("uvicorn_websockets", "uvicorn_wsproto", "aiohttp")
CEILING = "socketify"
#: Total server RSS allowed for 100,000 idle connections.
HUNDRED_K_MAX = 600e6
MIB = 2**20


@dataclass(frozen=True)
class Row:
    """One measurement, how to read it from a peer's results, and which way is better."""

    key: str
    label: str
    value: Callable[[dict, dict], float | None]
    lower_is_better: bool
    fmt: str


def _idle(size: int) -> Callable[[dict, dict], float | None]:
    def read(result: dict, run: dict) -> float | None:
        level = idle_at(result, size)
        if level is None or level["open"] < 0.98 * size or level.get("per_conn") is None:
            return None
        return level["per_conn"] / KB

    return read


def _fanout(size: int, key: str) -> Callable[[dict, dict], float | None]:
    return lambda result, run: (fanout_at(result, size) or {}).get(key)


def _rate(kind: str, key: str) -> Callable[[dict, dict], float | None]:
    return lambda result, run: (result.get(kind) or {}).get(key) or None


def _within(result: dict, run: dict) -> float | None:
    latency = run.get("latency") or {}
    mine = next((p for p in latency.get("peers", []) if p["name"] == result["name"]), None)
    return float(mine["within"]) if mine is not None else None


def rows(run: dict) -> list[Row]:
    """The rows of the run: idle levels, fan-out sizes, echo, handshakes, latency at scale."""
    plan = run["plan"]
    out = [Row(f"idle-{n}", f"KB per idle connection, {n:,}", _idle(n), True, "{:.1f}") for n in plan["sizes"]]
    for n in plan["fanout"]:
        out.append(
            Row(f"fanout-cpu-{n}", f"fan-out {n:,}: us CPU per delivery", _fanout(n, "cpu_us_per_msg"), True, "{:.2f}")
        )
        out.append(
            Row(f"fanout-ms-{n}", f"fan-out {n:,}: ms to last subscriber", _fanout(n, "latency_ms"), True, "{:.0f}")
        )
    out += [
        Row("echo", "echo msgs/s", _rate("echo", "rate"), False, "{:,.0f}"),
        Row("echo-cpu", "echo: us CPU per message", _rate("echo", "cpu_us"), True, "{:.1f}"),
        Row("handshakes", "handshakes/s", _rate("handshakes", "rate"), False, "{:,.0f}"),
        Row("handshake-cpu", "handshake: us CPU each", _rate("handshakes", "cpu_us"), True, "{:.0f}"),
    ]
    if run.get("latency"):
        out.append(Row("latency", "clients within 250 ms p95", _within, False, "{:,.0f}"))
    return out


def why_not(result: dict, row: Row, run: dict) -> str:
    """Why ``result`` has no figure for ``row``."""
    if result.get("unavailable"):
        return result["unavailable"]
    if row.key.startswith("idle-") or row.key.startswith("fanout-"):
        size = int(row.key.rsplit("-", 1)[1])
        level = idle_at(result, size)
        levels = (result.get("idle") or {}).get("anonymous") or []
        if level is None and levels:
            return f"stopped at {levels[-1]['open']:,} connections"
        if level is not None and level["open"] < 0.98 * size:
            return f"held only {level['open']:,}"
        if row.key.startswith("idle-") and level is not None and not level.get("per_conn"):
            return "RSS did not grow"
        if row.key.startswith("fanout-"):
            entry = fanout_at(result, size)
            if entry is not None and not entry.get("rounds"):
                return f"broadcast not delivered ({entry.get('delivered', 0):,}/{entry.get('armed', 0):,})"
    if row.key == "latency":
        mine = next((p for p in (run.get("latency") or {}).get("peers", []) if p["name"] == result["name"]), None)
        if mine is not None and not mine["within"]:
            stopped = {p.get("stopped") for p in mine.get("passes", [])} - {None}
            return "0: " + "; ".join(sorted(stopped)) if stopped else "0"
    problems = [p for p in result.get("problems") or [] if "wrk" not in p]
    return problems[0][:80] if problems else "not measured"


def ranking(run: dict) -> list[dict]:
    """Per row: every peer's value, the best peer and every peer's ratio to it (1.0 = the best)."""
    peers = [p for p in run["peers"] if not p["name"].endswith("_before")]
    out = []
    for row in rows(run):
        values = {p["name"]: row.value(p, run) for p in peers}
        present = {name: v for name, v in values.items() if v}
        best = (min if row.lower_is_better else max)(present, key=present.get) if present else None
        ratios = {}
        for name, value in present.items():
            # How many times worse than the best: >= 1.0 whichever way the row goes.
            ratios[name] = value / present[best] if row.lower_is_better else present[best] / value
        out.append({"row": row, "values": values, "best": best, "ratios": ratios})
    return out


def _label(run: dict, name: str) -> str:
    found = peer(run, name)
    return found["label"] if found else name


def ranking_markdown(run: dict) -> str:
    """The table of ratios to the best peer of each row, and a column naming that peer."""
    peers = [p for p in run["peers"] if not p["name"].endswith("_before")]
    ranked = ranking(run)
    header = ["row", "best", *[p["label"] for p in peers]]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * len(peers)]
    for entry in ranked:
        row, best = entry["row"], entry["best"]
        best_cell = f"{_label(run, best)} ({row.fmt.format(entry['values'][best])})" if best else "-"
        cells = []
        for p in peers:
            ratio = entry["ratios"].get(p["name"])
            if ratio is None:
                cells.append(f"*{why_not(p, row, run)}*")
            elif p["name"] == best:
                cells.append("**best**")
            else:
                cells.append(f"{ratio:.2f}x")
        lines.append("| " + " | ".join([row.label, best_cell, *cells]) + " |")
    return (
        "## Against the best peer of each row\n\n"
        "Each cell: how many times worse than the best peer of that row the peer did (1.00x would be as good; "
        "lower memory, CPU and time are better, higher rates and client counts are better). A peer that could "
        "not run a row says why, in italics.\n\n" + "\n".join(lines)
    )


# -- the strongest peers' targets ------------------------------------------------------------------


def _best_of(run: dict, row: Row, names: tuple[str, ...]) -> tuple[str | None, float | None]:
    present = {n: row.value(peer(run, n), run) for n in names if peer(run, n)}
    present = {n: v for n, v in present.items() if v}
    if not present:
        return None, None
    name = (min if row.lower_is_better else max)(present, key=present.get)
    return name, present[name]


def _row(run: dict, key: str) -> Row | None:
    return next((r for r in rows(run) if r.key == key), None)


def field_verdicts(run: dict) -> list[Verdict]:
    """The targets against uvicorn, aiohttp, picows, granian and socketify."""
    green = peer(run, GREEN)
    out: list[Verdict] = []
    sizes = [n for n in run["plan"]["sizes"] if n in (1000, 10000, 19000)] or run["plan"]["sizes"]
    for size in sizes:
        row = _row(run, f"idle-{size}")
        mine = row.value(green, run) if green else None
        name, best = _best_of(run, row, PYTHON_HOSTED)
        target = f"idle memory per connection at {size:,}: the lowest of uvicorn, aiohttp, picows and granian"
        if mine is None or not best:
            out.append(Verdict(f"field-idle-{size}", target, "not measured", None))
        else:
            out.append(
                Verdict(
                    f"field-idle-{size}",
                    target,
                    f"{mine:.1f} KB vs {best:.1f} KB ({_label(run, name)})",
                    mine <= best,
                    f"{mine / best:.2f}x the lowest" if mine > best else "",
                )
            )
        ceiling = row.value(peer(run, CEILING), run) if peer(run, CEILING) else None
        target = f"idle memory per connection at {size:,}: within 2x of socketify"
        if mine is None or not ceiling:
            out.append(Verdict(f"field-idle-ceiling-{size}", target, "not measured", None))
        else:
            out.append(
                Verdict(
                    f"field-idle-ceiling-{size}",
                    target,
                    f"{mine / ceiling:.2f}x ({mine:.1f} KB vs {ceiling:.1f} KB)",
                    mine <= 2 * ceiling,
                    f"{mine / ceiling:.2f}x" if mine > 2 * ceiling else "",
                )
            )
    row = _row(run, "latency")
    if row is not None:
        mine = row.value(green, run) if green else None
        name, best = _best_of(run, row, PYTHON_HOSTED)
        target = "clients within 250 ms p95: at least 1.2x the best of uvicorn, aiohttp, picows and granian"
        if mine is None or not best:
            out.append(Verdict("field-latency", target, "not measured", None))
        else:
            ratio = mine / best
            out.append(
                Verdict(
                    "field-latency",
                    target,
                    f"{ratio:.2f}x ({mine:,.0f} vs {best:,.0f}, {_label(run, name)})",
                    ratio >= 1.2,
                    f"{ratio:.2f}x" if ratio < 1.2 else "",
                )
            )
        ceiling = row.value(peer(run, CEILING), run) if peer(run, CEILING) else None
        target = "clients within 250 ms p95: at least 0.5x socketify"
        if mine is None or not ceiling:
            out.append(Verdict("field-latency-ceiling", target, "not measured", None))
        else:
            ratio = mine / ceiling
            out.append(
                Verdict(
                    "field-latency-ceiling",
                    target,
                    f"{ratio:.2f}x ({mine:,.0f} vs {ceiling:,.0f})",
                    ratio >= 0.5,
                    f"{ratio:.2f}x" if ratio < 0.5 else "",
                )
            )
    row = _row(run, "handshakes")
    mine = row.value(green, run) if green else None
    name, best = _best_of(run, row, UVICORN_AIOHTTP)
    target = "handshakes/s: at least the best of uvicorn and aiohttp"
    if mine is None or not best:
        out.append(Verdict("field-handshakes", target, "not measured", None))
    else:
        ratio = mine / best
        out.append(
            Verdict(
                "field-handshakes",
                target,
                f"{ratio:.2f}x ({mine:,.0f}/s vs {best:,.0f}/s, {_label(run, name)})",
                ratio >= 1.0,
                f"{ratio:.2f}x" if ratio < 1 else "",
            )
        )
    out.append(hundred_k_verdict(run.get("hundred_k")))
    return out


def latency_missed(latency: dict) -> bool:
    """True when asok_green's clients within the limit miss 1.2x the best Python-hosted peer or 0.5x socketify."""
    within = {p["name"]: p["within"] for p in latency.get("peers", [])}
    mine = within.get(GREEN)
    if mine is None:
        return False
    best = max((within[n] for n in PYTHON_HOSTED if n in within), default=None)
    ceiling = within.get(CEILING)
    return bool((best and mine < 1.2 * best) or (ceiling and mine < 0.5 * ceiling))


def _green_hundred_k(hundred: dict | None) -> list[dict]:
    return [r for r in (hundred or {}).get("results", []) if r["name"] == GREEN]


def hundred_k_verdict(hundred: dict | None) -> Verdict:
    """100,000 idle connections held, a broadcast to all delivered, under 600 MB of server RSS."""
    target = "100,000 idle connections held, a broadcast to all delivered, under 600 MB of server RSS in total"
    runs = _green_hundred_k(hundred)
    if not runs:
        return Verdict("hundred-k", target, "not measured (`--hundred-k`)", None)
    parts, met = [], True
    for r in runs:
        b = r.get("broadcast") or {}
        if not r.get("rss"):
            parts.append(f"{r['kind']}: failed ({'; '.join(r['problems'])[:120]})")
            met = False
            continue
        ok = r["open"] >= r["target"] and b.get("delivered", 0) >= r["open"] and r["rss"] < HUNDRED_K_MAX
        met = met and ok
        parts.append(
            f"{r['kind']}: {r['open']:,} held, {b.get('delivered', 0):,} got the broadcast, {r['rss'] / 1e6:,.0f} MB"
        )
    return Verdict("hundred-k", target, "; ".join(parts), met, "" if met else "see the 100,000 section")


def targets_markdown(run: dict) -> str:
    """The targets against the strongest peers."""
    lines = ["## Targets against the strongest peers", "", "| target | measured | verdict |", "| --- | --- | --- |"]
    for v in field_verdicts(run):
        mark = "met" if v.met else "MISSED" if v.met is False else "n/a"
        lines.append(f"| {v.target} | {v.measured} | {mark + (': ' + v.shortfall if v.shortfall else '')} |")
    return "\n".join(lines) + (
        "\n\nThe causes of the misses, with the profiles: *Where a peer beats asok_green* and the 100,000 "
        "section below."
    )


# -- the floor ---------------------------------------------------------------------------------------


def floor_markdown(run: dict) -> str:
    """The system calls alone, and asok_green (and the best peer) against them."""
    floor = run.get("floor")
    if not floor:
        return ""
    head = "## The floor: the system calls alone\n\n"
    if floor.get("error"):
        return head + f"Not measured: {floor['error']}."
    green = peer(run, GREEN) or {}
    lines = [
        "`scripts/benchlib/floor.c` (compiled with `cc -O2`), on the same loopback: for a fan-out, one "
        "`send()` of the same 150-byte text frame to each of N connected sockets (the other ends held by another "
        "process that does not read), in a loop with nothing else; for a handshake, accept, `recv` of the "
        "request, `send` of a precomputed 101, `recv` of the close frame, `send` of the close, `close` (no "
        "parsing, no SHA-1). CPU is the C process's own, user and system: on loopback a `send` also runs the "
        "receiving side of TCP in the sender's context, for the floor as for every peer. Median of 3 runs.",
        "",
        "| measurement | floor | asok_green | asok_green / floor | best peer | best peer / floor |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    ranked = {e["row"].key: e for e in ranking(run)}
    for size, entry in (floor.get("fanout") or {}).items():
        if "error" in entry:
            lines.append(f"| fan-out {int(size):,}: us CPU per delivery | {entry['error']} | | | | |")
            continue
        mine = (fanout_at(green, int(size)) or {}).get("cpu_us_per_msg")
        lines.append(
            _floor_line(
                run,
                f"fan-out {int(size):,}: us CPU per delivery",
                entry["cpu_us_per_msg"],
                mine,
                ranked.get(f"fanout-cpu-{size}"),
                "{:.2f}",
            )
        )
        ms = (fanout_at(green, int(size)) or {}).get("latency_ms")
        lines.append(
            _floor_line(
                run,
                f"fan-out {int(size):,}: ms for the loop / to the last subscriber",
                entry["ms_per_round_best"],
                ms,
                ranked.get(f"fanout-ms-{size}"),
                "{:.1f}",
            )
        )
    shake = floor.get("handshake") or {}
    if shake and "error" not in shake:
        mine = (green.get("handshakes") or {}).get("cpu_us")
        lines.append(
            _floor_line(
                run, "handshake: us CPU each", shake["cpu_us_each"], mine, ranked.get("handshake-cpu"), "{:.0f}"
            )
        )
        lines.append(
            _floor_line(
                run,
                "handshakes/s (one at a time, for the floor)",
                shake["per_second"],
                (green.get("handshakes") or {}).get("rate"),
                ranked.get("handshakes"),
                "{:,.0f}",
            )
        )
    return head + "\n".join(lines)


def _floor_line(run: dict, label: str, floor: float, mine: float | None, entry: dict | None, fmt: str) -> str:
    best = entry["best"] if entry else None
    theirs = entry["values"][best] if best else None
    return (
        f"| {label} | {fmt.format(floor)} | {fmt.format(mine) if mine else '-'} | "
        f"{f'{mine / floor:.2f}x' if mine else '-'} | "
        f"{f'{_label(run, best)} ({fmt.format(theirs)})' if best else '-'} | "
        f"{f'{theirs / floor:.2f}x' if theirs else '-'} |"
    )


# -- 100,000 idle --------------------------------------------------------------------------------------


def hundred_k_markdown(run: dict) -> str:
    """The 100,000 idle connections row: asok_green's workers and the best peer's processes."""
    hundred = run.get("hundred_k")
    if not hundred:
        return ""
    lines = [
        f"## {hundred['connections']:,} idle connections on this {run['machine']['cores']}-core VM",
        "",
        "A process may hold at most 20,000 open files here, so the connections go to several server "
        "processes. asok_green: `asok serve --gevent --workers N` with `WS_REDIS_URL` (one port shared through "
        "SO_REUSEPORT, a redis-server of the run's own joins the workers into one server); every connection on "
        "`/room`; one `!bcast` sent to one worker reaches all of them through Redis. *logged in*: every "
        "connection carries a real Asok session (a user online, tracked by presence on its worker and in "
        "Redis). The peer: as many processes of its script, each on a port of its own (it has no cluster), the "
        "connections split over them, the broadcast triggered in each. The clients: scripts/loadgen.py "
        "processes of at most 5,000 connections each, each on its own 127.0.0.x source address. Server RSS: "
        "every process of the server (a supervising parent included), Redis not counted (given apart); the "
        "sum of RSS counts the pages the processes share (the interpreter's and the libraries' code) once per "
        "process, PSS shares them out. The target is judged on the sum of RSS.",
        "",
        "| server | connections | processes | held | broadcast delivered | ms to the last | server RSS | "
        "server PSS | KB per connection | Redis RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in hundred["results"]:
        b = r.get("broadcast") or {}
        if not r.get("rss"):
            lines.append(
                f"| {r['label']} | {r['kind']} | {r.get('workers', '-')} | failed: "
                f"{'; '.join(r['problems'])[:200]} | | | | | | |"
            )
            continue
        ms, redis, pss = b.get("ms_to_last"), r.get("redis_rss"), r.get("pss")
        lines.append(
            f"| {r['label']} | {r['kind']} | {r['processes']} | {r['open']:,} of {r['target']:,} | "
            f"{b.get('delivered', 0):,} of {b.get('armed', 0):,} | {f'{ms:,.0f}' if ms else '-'} | "
            f"{r['rss'] / 1e6:,.0f} MB | {f'{pss / 1e6:,.0f} MB' if pss else '-'} | {r['per_conn'] / KB:.2f} | "
            f"{f'{redis / 1e6:,.0f} MB' if redis else '-'} |"
        )
    for r in hundred["results"]:
        workers = r.get("per_worker") or []
        if not workers or not r.get("rss"):
            continue
        in_workers = sum(w["rss"] for w in workers)
        lines += [
            "",
            f"asok_green, {r['kind']}: {len(workers)} workers of {in_workers / len(workers) / 1e6:,.0f} MB each on "
            f"average ({min(w['files'] for w in workers):,} to {max(w['files'] for w in workers):,} open files "
            f"each), the supervising parent {(r['rss'] - in_workers) / 1e6:,.0f} MB, {r['base_rss'] / 1e6:,.0f} MB "
            f"in all before the first connection ({r['base_rss'] / HUNDRED_K_MAX:.0%} of the 600 MB: one "
            f"interpreter with Asok, gevent and redis-py per process, {len(workers)} processes for "
            f"{r['target']:,} sockets at 20,000 open files each at most), {(r['rss'] - r['base_rss']) / 1e6:,.0f} MB "
            f"for the connections."
            + (
                f" {r['target'] - r['open']:,} connections were not held when counted: over the whole attempt "
                f"the keep-alive closed {r['closed_silent']:,} whose pong it had not read within "
                "`WS_PING_TIMEOUT` (20 s), the 2 cores being shared by the server's processes, the client "
                "processes and other work (see the load average above)."
                if r.get("closed_silent")
                else ""
            ),
        ]
    problems = [f"{r['label']} ({r['kind']}): {p}" for r in hundred["results"] for p in r.get("problems", [])]
    if problems:
        lines += ["", "Problems: " + "; ".join(problems)]
    lines += ["", "MB = 10^6 bytes. The target: under 600 MB of server RSS in total."]
    return "\n".join(lines)
