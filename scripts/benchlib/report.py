"""BENCHMARKS.md: the latest run's table, the targets, why a target is missed, and the method."""

from __future__ import annotations

from . import field, gaps, latency_report, steady_report
from . import table as results_table
from .extras_report import cluster_section, metrics_cost_section
from .targets import GREEN, KB, Verdict, idle_at, judge, peer

PROFILE_TITLES = {
    "fanout": "broadcast fan-out to the largest subscriber count",
    "echo": "echo with the bench's concurrent clients",
    "handshakes": "opening handshakes (open, upgrade, close)",
    "http_idle": "HTTP (wrk) with idle WebSockets held",
}
#: What one unit of work costs asok_green, for the targets on rates.
RATE_PATHS = {
    "echo": "Each message costs asok_green two greenlet switches (hub to connection and back), a `recv` and "
    "a `send` system call, the frame parser and the handler; a switch copies the part of the C stack the "
    "greenlet uses. The profile of that path (`Hub.run` is the C event loop and the switches; `_enqueue` "
    "is the `send` call):",
    "handshakes": "Each handshake costs asok_green an accept, a new greenlet and pywsgi's handler, the request "
    "line and the head parsed once by the upgrade's lean path (no `email` parser, no WSGI environ), the "
    "upgrade checks and the accept key, the 101 in one `sendall`, the Connection and its registration, and "
    "at the client's close the echoed close frame and the teardown. The profile of that path (system calls "
    "are charged to the Python line that makes them: `send` includes the kernel's loopback delivery):",
}
#: Which profile explains which target.
PROFILE_FOR = {"echo": "echo", "handshakes": "handshakes", "http": "http_idle"}


def table(run: dict) -> str:
    """The plain-text table printed at the end of a run."""
    verdicts = judge(run)
    lines = [results_table.text(run), ""]
    if run.get("latency"):
        lines += [latency_report.text(run["latency"]), ""]
    if run.get("steady"):
        lines += [steady_report.text(run["steady"]), ""]
    lines.append("Targets (asok_green, ratios within this run):")
    for v in verdicts:
        lines.append(f"  [{_mark(v)}] {v.target}: {v.measured}" + (f" -- {v.shortfall}" if v.shortfall else ""))
    return "\n".join(lines)


def _mark(v: Verdict) -> str:
    return "met" if v.met else "MISSED" if v.met is False else "n/a"


def markdown(run: dict, chart_path: str) -> str:
    """The whole of BENCHMARKS.md."""
    verdicts = judge(run)
    parts = [
        _intro(run, chart_path),
        "## Results\n\n" + results_table.markdown(run) + "\n\n" + _legend(run),
        field.ranking_markdown(run),
        _targets(verdicts),
        field.targets_markdown(run),
        _misses(run, verdicts),
        gaps.section(run, _profile_lines),
        field.floor_markdown(run),
        field.hundred_k_markdown(run),
        steady_report.section(run.get("steady")),
        latency_report.section(run.get("latency")),
        _memory_experiment(run.get("memory_experiment")),
        cluster_section(run.get("cluster")),
        metrics_cost_section(run.get("metrics_cost")),
        _proposals(run),
        gaps.proposals(),
        _profiles(run),
        _method(run),
        _problems(run),
    ]
    return "\n\n".join(p.strip() for p in parts if p and p.strip()) + "\n"


def keep_earlier(markdown_text: str, earlier: str) -> str:
    """``markdown_text`` followed by the sections of ``earlier`` (the file it replaces) that it has not got.

    Sections measured on their own (``--idle-only``, ``--latency-only``, notes of other runs) outlive a run
    that does not measure them.
    """
    titles = {line for line in markdown_text.splitlines() if line.startswith("## ")}
    kept, keeping = [], False
    for line in earlier.splitlines():
        if line.startswith("## "):
            keeping = line not in titles
        if keeping:
            kept.append(line)
    if not kept:
        return markdown_text.rstrip("\n") + "\n"
    note = "*The sections below come from earlier runs (each says when and how it was measured), kept as they were.*"
    return markdown_text.rstrip("\n") + "\n\n---\n\n" + note + "\n\n" + "\n".join(kept).strip() + "\n"


def _intro(run: dict, chart_path: str) -> str:
    m = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return f"""# Benchmarks

asok_green against its peers, every one started in turn under the same load in one run of
`scripts/bench.py`. This file is that script's output: re-run it rather than edit it.

- **Run**: {run["date"]}, `{run["command"]}`, {run["seconds"]:.0f} s in all.
- **Machine**: {m["cores"]} cores ({m["cpu"]}), {m["memory_gib"]} GiB, Linux {m["kernel"]}, Python {m["python"]},
  open files {m["open_files"]} per process, load average {m["load_before"]:.2f} when the run started. The machine
  is shared: absolute numbers are noisy, so compare peers within the run (medians and ratios).
- **Versions**: {versions}.

![RSS per idle connection, fan-out CPU, echo and handshake rates, HTTP rates]({chart_path})"""


def _legend(run: dict) -> str:
    plan = run["plan"]
    return (
        f"KB = 1000 bytes. *KB/idle conn*: growth of the server's RSS divided by the connections open, "
        f"connections that never spoke (the figure once they have: *Idle memory: never spoke and steady*), "
        f"measured at each level on the way up ({', '.join(f'{n:,}' for n in plan['sizes'])}). "
        f"*Fan-out*: one {plan['message_size']}-byte JSON message broadcast to every idle `/room` subscriber; "
        f"server CPU (all its threads) from before the trigger to the last delivery, divided by deliveries; "
        f"medians over the rounds. *n/a*: the peer has no Asok login."
    )


def _targets(verdicts: list[Verdict]) -> str:
    lines = ["## Targets", "", "| target | measured | verdict |", "| --- | --- | --- |"]
    for v in verdicts:
        verdict = _mark(v) + (f": {v.shortfall}" if v.shortfall else "")
        lines.append(f"| {v.target} | {v.measured} | {verdict} |")
    return "\n".join(lines)


def _misses(run: dict, verdicts: list[Verdict]) -> str:
    missed = [v for v in verdicts if v.met is False]
    if not missed:
        return "## Where a target is missed\n\nNone in this run."
    out = ["## Where a target is missed"]
    explained_memory = False
    for v in missed:
        if v.key.startswith("memory") and explained_memory:
            why = "Same cause as the first memory target above."
        else:
            why = _why(run, v)
            explained_memory = explained_memory or v.key.startswith("memory")
        out.append(f"### {v.target}\n\n**Missed: {v.shortfall or v.measured}.** " + why)
    return "\n\n".join(out)


def _why(run: dict, v: Verdict) -> str:
    key = v.key
    if key.startswith("memory"):
        return _why_memory(run)
    if key.startswith("fanout"):
        return _why_fanout(run)
    if key.startswith("capacity"):
        problems = (peer(run, GREEN) or {}).get("problems", [])
        return "What went wrong: " + ("; ".join(problems) if problems else "see the server log of the run.")
    if key == "http":
        return _why_http(run)
    if key == "latency":
        return "The curves, and a profile of asok_green where it passed the limit, are in the latency section below."
    return _why_rate(run, key)


def _why_rate(run: dict, key: str) -> str:
    green, ws = peer(run, GREEN) or {}, peer(run, "websockets_asyncio") or {}
    mine, theirs = (green.get(key) or {}).get("rounds"), (ws.get(key) or {}).get("rounds")
    text = ""
    if mine and theirs:
        text += (
            f"Round by round (interleaved, same moments of the shared machine): asok_green "
            f"{', '.join(f'{v:,.0f}' for v in mine)}; websockets {', '.join(f'{v:,.0f}' for v in theirs)}. "
        )
    text += RATE_PATHS.get(key, "The profile of that path:") + "\n\n"
    profile = (green.get("profiles") or {}).get(PROFILE_FOR.get(key, ""))
    text += _profile_lines(profile, 8)
    mine_cpu, theirs_cpu = (green.get(key) or {}).get("cpu_us"), (ws.get(key) or {}).get("cpu_us")
    if mine_cpu and theirs_cpu:
        text += (
            f"\n\nServer CPU per unit, the figure the machine's noise moves least: asok_green {mine_cpu:.1f} us, "
            f"websockets {theirs_cpu:.1f} us ({mine_cpu / theirs_cpu:.2f}x)."
        )
    return text


def _why_memory(run: dict) -> str:
    exp = run.get("memory_experiment")
    if not exp:
        return "Run the bench with the idle-memory experiment for the breakdown."
    text = ""
    sites = (exp.get("tracemalloc") or {}).get("sites") or []
    if sites:
        text += (
            "Largest allocation sites per idle connection (tracemalloc): "
            + "; ".join(f"`{s['where']}` {s['bytes_per_conn']:,.0f} B" for s in sites[:4])
            + ". "
        )
    variants = {v["name"]: v["per_conn"] for v in exp["variants"] if v.get("per_conn")}
    base, trimmed, parked = variants.get("as shipped"), variants.get("drop all"), variants.get("idle watcher")
    if base and trimmed:
        text += (
            "An idle connection is a greenlet parked in `recv` inside gevent-pywsgi's request handler, and "
            "everything that handler references stays alive with it: the `rfile` BufferedReader with its "
            "8 KiB buffer, the WSGI environ, the parsed header message, the response headers. "
        )
        text += (
            f"The experiment below measured {base / KB:.1f} KB per connection as shipped and "
            f"{trimmed / KB:.1f} KB with that handler state dropped after the upgrade "
            f"({(base - trimmed) / KB:.1f} KB saved, at {exp['size']:,} connections): not enough, because a "
            f"greenlet parked in `recv` costs about 8.5 KB by itself (its C stack copied to the heap, a page of "
            f"Python frame stack, the Greenlet object). "
        )
    if parked:
        text += (
            f"With no greenlet at all while a connection is idle (the socket's read watcher spawns one when "
            f"data arrives) it measured {parked / KB:.1f} KB per connection. "
        )
    green = peer(run, GREEN) or {}
    size = run["plan"]["sizes"][-1]
    anon, auth = idle_at(green, size), idle_at(green, size, "authenticated")
    if anon and auth and anon.get("per_conn") and auth.get("per_conn"):
        text += (
            f"A logged-in connection costs {(auth['per_conn'] - anon['per_conn']) / KB:.1f} KB more "
            f"({auth['per_conn'] / KB:.1f} KB at {size:,}): each one holds its own User model instance and "
            "Session loaded at the handshake. "
        )
    return text + "See *Idle memory: what a connection is made of* and *Proposed changes*."


def _why_fanout(run: dict) -> str:
    profile = ((peer(run, GREEN) or {}).get("profiles") or {}).get("fanout")
    return (
        "Fan-out CPU is the loop over recipients in the hub plus one `send` system call per recipient; on "
        "loopback the kernel also does the receiving side's work in the sender's context, so most of the "
        "time is the kernel's, charged to the server. What Python adds per recipient shows in the profile "
        "(samples whose innermost Python line is the `send` call include that kernel time):\n\n"
        + _profile_lines(profile, 8)
    )


def _why_http(run: dict) -> str:
    text = (
        "Idle WebSockets cost the HTTP path nothing per request in principle (they are greenlets parked on "
        "epoll); what moves the rate is the extra memory and the scheduler's bookkeeping, and the noise of "
        "a shared machine. "
    )
    nodelay = (run.get("memory_experiment") or {}).get("nodelay_http")
    if nodelay:
        text += "With TCP_NODELAY on the prototype the two rates were " + _nodelay_rates(nodelay) + ". "
    profile = ((peer(run, GREEN) or {}).get("profiles") or {}).get("http_idle")
    return text + "\n\n" + _profile_lines(profile, 8)


def _memory_experiment(exp: dict | None) -> str:
    if not exp:
        return ""
    out = [
        "## Idle memory: what a connection is made of",
        f"asok_green run through `scripts/peers/asok_green_variant.py` (the package unchanged; experiments "
        f"applied from outside), {exp['size']:,} anonymous idle connections each time, a fresh server per line."
        + (f" {exp['skipped']}." if exp.get("skipped") else ""),
    ]
    tm = exp.get("tracemalloc") or {}
    if tm.get("sites"):
        out.append(
            f"**tracemalloc** (allocations alive after opening the connections minus before, one frame): "
            f"{tm['traced_per_conn'] / KB:.1f} KB per connection traced by Python's allocators. A parked "
            f"greenlet's stack is copied to the heap when it switches out, so it appears at the line that "
            f"waits (`_socketcommon.py`'s `_wait`); Python frames of 3.11 live in data-stack chunks and memory "
            f"the allocator keeps, which tracemalloc does not see but RSS does.\n\n"
            "| allocation site | code | bytes per connection | blocks per connection |\n| --- | --- | ---: | ---: |\n"
            + "\n".join(
                f"| `{s['where']}` | `{s.get('code', '').replace('|', '/')}` | {s['bytes_per_conn']:,.0f} | "
                f"{s['blocks_per_conn']:.1f} |"
                for s in tm["sites"]
            )
        )
    base = next((v["per_conn"] for v in exp["variants"] if v["name"] == "as shipped"), None)
    rows = [
        "| variant | what changes | KB per idle connection (RSS) | saved vs as shipped |",
        "| --- | --- | ---: | ---: |",
    ]
    for v in exp["variants"]:
        per = v.get("per_conn")
        kb = f"{per / KB:.1f}" if per else "-"
        saved = f"{(base - per) / KB:.1f} KB" if base and per and v["name"] != "as shipped" else ""
        rows.append(f"| {v['name']} | {v['what']} | {kb} | {saved} |")
    title = (
        "**RSS per idle connection with parts of pywsgi's handler state dropped after the upgrade, and "
        "with no greenlet at all while idle**"
        if len(exp["variants"]) > 1
        else "**RSS per idle connection**"
    )
    out.append(f"{title}:\n\n" + "\n".join(rows))
    environ = next((v.get("per_conn") for v in exp["variants"] if v["name"] == "drop environ"), None)
    if base and environ and environ > base + 0.5 * KB:
        out.append(
            f"Emptying the environ alone made RSS grow ({(environ - base) / KB:.1f} KB): probably the freed "
            "strings leave allocator pools partly used that the next connections' objects, of other sizes, do "
            "not fill; it pays only together with the rest."
        )
    rates = [r for r in exp.get("rates", []) if "echo" in r]
    if rates:
        out.append(
            "Echo and handshake rates as shipped and with variants of the reading path, in interleaved rounds "
            "like the main table's "
            "(medians; server CPU per unit is the steadier figure on a shared machine):\n\n"
            "| variant | echo msgs/s | server CPU us/msg | handshakes/s | server CPU us/handshake |\n"
            "| --- | ---: | ---: | ---: | ---: |\n"
            + "\n".join(
                f"| {r['name']} | {r['echo']:,.0f} | {_fmt(r.get('echo_cpu_us'), '{:.1f}')} | "
                f"{r['handshakes']:,.0f} | {_fmt(r.get('handshake_cpu_us'), '{:.0f}')} |"
                for r in rates
            )
        )
    return "\n\n".join(out)


def _fmt(value: float | None, fmt: str) -> str:
    return fmt.format(value) if value is not None else "-"


def _nodelay_rates(nodelay: dict) -> str:
    return (
        f"{nodelay['plain']['rate']:,.0f} requests/s alone and {nodelay['with_idle']['rate']:,.0f} with "
        f"{nodelay['idle']:,} idle WebSockets"
    )


def _share(profile: dict | None, needle: str) -> float | None:
    """Inclusive share of the first function whose name contains ``needle``."""
    for name, share in (profile or {}).get("inclusive", []):
        if needle in name:
            return share
    return None


def _kb(value: float | None) -> str:
    return f"{value / KB:.1f} KB" if value else "not measured"


def _rates_of(exp: dict, names: dict[str, str], key: str) -> str:
    """``names`` maps variant -> label; rate and server CPU per unit of each, for ``key``."""
    rates = {r["name"]: r for r in exp.get("rates", []) if "echo" in r}
    cpu_key = "echo_cpu_us" if key == "echo" else "handshake_cpu_us"
    parts = [
        f"{rates[n][key]:,.0f}/s ({_fmt(rates[n].get(cpu_key), '{:.1f}')} us of server CPU each) {label}"
        for n, label in names.items()
        if rates.get(n, {}).get(key)
    ]
    return ", ".join(parts) or "not measured"


def _proposals(run: dict) -> str:
    """Changes the run's profiles point at that asok_green has not made yet."""
    items = []
    share = _share((((peer(run, GREEN) or {}).get("profiles")) or {}).get("echo"), "after_handler")
    if share and share > 0.02:
        items.append(
            "**Cheaper `after_handler`** (`asok_green/hub.py`, `WebSocketServer.after_handler`): releasing "
            f"Asok's per-greenlet database connections after every handler call takes {share:.1%} of the echo "
            "profile's samples, although it closes only what the greenlet opened (`asok_green/dbrelease.py`)."
        )
    if not items:
        return ""
    return "## Proposed changes\n\n" + "\n".join(f"{n}. {item}" for n, item in enumerate(items, 1))


def _profile_lines(profile: dict | None, top: int = 10) -> str:
    if not profile:
        return "(no profile in this run: py-spy missing, or `--no-profile`)"
    if profile.get("error"):
        return f"(py-spy failed: {profile['error']})"
    if not profile.get("samples"):
        return "(py-spy took no samples)"
    lines = [
        f"{profile['samples']:,} samples. Innermost Python line (self time; C calls and system calls are charged "
        "to the line that makes them):",
        "",
        "| share | line |",
        "| ---: | --- |",
    ]
    lines += [f"| {share:.1%} | `{name}` |" for name, share in profile["self"][:top]]
    return "\n".join(lines)


def _branches(inclusive: list) -> list:
    """Inclusive entries below the trunk (the functions on the stack of nearly every sample)."""
    if not inclusive:
        return []
    trunk = inclusive[0][1] * 0.97
    return [(name, share) for name, share in inclusive if share < trunk]


def _profiles(run: dict) -> str:
    profiles = (peer(run, GREEN) or {}).get("profiles") or {}
    if not profiles:
        return ""
    out = [
        "## Profiles of asok_green's hot paths",
        "py-spy sampling the server process (`--nonblocking`, 250 Hz) during an extra pass after each "
        "measured one, so the measured numbers are not slowed by it.",
    ]
    for key, title in PROFILE_TITLES.items():
        profile = profiles.get(key)
        if profile is None:
            continue
        body = _profile_lines(profile, 12)
        branches = _branches(profile.get("inclusive") or [])
        if branches:
            body += (
                "\n\nInclusive (the function or anything it calls; the call chain every sample shares is left "
                "out):\n\n| share | function |\n| ---: | --- |\n"
            )
            body += "\n".join(f"| {share:.1%} | `{name}` |" for name, share in branches[:10])
        out.append(f"### {title.capitalize()}\n\n{body}")
    return "\n\n".join(out)


def _method(run: dict) -> str:
    plan = run["plan"]
    peers = "\n".join(f"- **{p['label']}**: {p['notes']}" for p in run["peers"])
    return f"""## Method

{peers}

Load comes from separate `scripts/loadgen.py` processes (raw non-blocking sockets on epoll, at most
5,000 connections each, each bound to its own source address 127.0.0.x), never from the server's
process. Every server is warmed up first (one page, 20 connections and a broadcast, 50 handshakes, a
short echo) and must then be idle (under 10% of a core for 0.5 s) before anything is measured.

1. **Echo and handshakes**, first, on one server of every peer, all started together and measured in
   {plan["rate_rounds"]} interleaved rounds (each round visits every peer, in alternating order; the
   table gives the median), so the noise of the shared machine falls on all of them alike. Echo:
   {plan["echo_clients"]} clients on `/echo`, each sending a 64-byte message and the next one when the
   echo is back, for {plan["echo_seconds"]:.0f} s after a 0.5 s warm-up. Handshakes: {plan["handshakes"]:,}
   connections to `/echo`, {plan["handshake_concurrency"]} in flight, each opened, upgraded, sent a close
   frame and closed (stopped at {plan["handshake_seconds"]:.0f} s).
2. **HTTP alone**, in a fresh server per peer: `wrk -t1 -c{plan["http_connections"]}
   -d{plan["http_seconds"]:.0f}s` on the peer's page (`/whoami` of the Asok project for Asok apps, a
   3-byte answer for the others).
3. **Idle levels**, in that same server: connections to `/room` are opened up to each level in turn
   ({", ".join(f"{n:,}" for n in plan["sizes"])}); when the server is idle again, its RSS (VmRSS) and
   threads are read, RSS before the first level being the base. At the fan-out sizes
   ({", ".join(f"{n:,}" for n in plan["fanout"])}), rounds of one broadcast each (the control message
   `!bcast 1 {plan["message_size"]}` from one more client; the server answers `!done` when its loop
   ends): server CPU from `/proc/PID/task/*/schedstat` (nanoseconds, all threads) before the trigger and
   after the last subscriber reported the message, and the time from the trigger to that last delivery
   (each loadgen process stamps its last delivery with `time.monotonic()`, one clock for all
   processes; it includes the loadgen's own reading of thousands of sockets). At {plan["http_idle"]:,}
   idle, wrk again. At the top level, one broadcast to everyone.
4. **Authenticated idle levels** (Asok apps only), in a third fresh server: the same levels, every
   handshake carrying the `asok_session` and `asok_sid` cookies of a real login through the project's
   `/login` page.

A server is stopped before its idle clients disconnect (a thread-per-connection server would
otherwise spend minutes tearing down thousands of threads). Every load loop is bounded in count and
time; all traffic goes to 127.0.0.0/8. Peers that cannot reach a size are reported as such. On
loopback, a `send` also runs the receiving side of TCP in the sender's context, so fan-out CPU
includes most of the kernel's delivery work."""


def _problems(run: dict) -> str:
    lines = [f"- {p['label']}: {problem}" for p in run["peers"] for problem in p.get("problems", [])]
    if not lines:
        return ""
    return "## Problems during the run\n\n" + "\n".join(lines)
