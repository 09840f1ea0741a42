"""The latency-at-scale results as text: the printed summary and BENCHMARKS.md's section."""

from __future__ import annotations

import linecache
import math
import pathlib
import re

from . import sections
from .targets import GREEN, latency_verdict

REPO = pathlib.Path(__file__).resolve().parents[2]

TITLE = "## Latency at scale (broadcast round trips)"
#: Sections of BENCHMARKS.md the latency section goes before when it is added to an existing file.
INSERT_BEFORE = ("## Idle memory", "## Cross-node fan-out", "## Metrics cost", "## Method")


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _peer(latency: dict, name: str) -> dict | None:
    return next((p for p in latency["peers"] if p["name"] == name), None)


def settings(latency: dict) -> str:
    """One sentence: steps, seconds, senders, pinning."""
    plan = latency["plan"]
    return (
        f"clients added {plan['step']:,} at a time up to {plan['max_clients']:,}, {plan['seconds']:g} s of rounds "
        f"per step (in {plan.get('slices', 1)} slices, the servers in turn); {latency['senders']} senders per "
        f"round ({latency['senders_per_process']} in each of {latency['processes']} client processes); "
        f"{plan['passes']} pass(es); {latency['pinning']}"
    )


def text(latency: dict) -> str:
    """The plain-text summary printed at the end of a run."""
    limit = latency["plan"]["limit_ms"]
    lines = [f"Latency at scale: clients within {limit:.0f} ms p95 broadcast round trip ({settings(latency)})"]
    for result in latency["peers"]:
        per_pass = ", ".join(f"{p['within']:,}" for p in result["passes"])
        cpu = result.get("cpu_us_per_msg")
        cpu_text = f"; server CPU {cpu:.1f} us per delivered message" if cpu else ""
        lines.append(f"  {result['label']:<18} {result['within']:>8,.0f}  (passes: {per_pass}{cpu_text})")
        for step in result["curve"]:
            lines.append(
                f"      {step['clients']:>7,} clients: p50 {_ms(step['p50_ms'])} ms, p95 {_ms(step['p95_ms'])} ms"
            )
    verdict = latency_verdict(latency)
    mark = "met" if verdict.met else "MISSED" if verdict.met is False else "n/a"
    lines.append(f"  [{mark}] {verdict.target}: {verdict.measured}")
    return "\n".join(lines)


def section(latency: dict | None, chart_path: str | None = None, note: str = "") -> str:
    """BENCHMARKS.md's latency section (``chart_path``: an image of the curves of its own, if any)."""
    if not latency:
        return ""
    plan = latency["plan"]
    limit = plan["limit_ms"]
    peers = latency["peers"]
    websockets = _peer(latency, "websockets_asyncio")
    head = [TITLE, ""]
    if note:
        head += [note, ""]
    head.append(
        f"The broadcast test of the websocket-shootout: every client is connected to `/shootout`; in rounds, a few "
        f'clients picked at random send `{{"type": "broadcast", "payload": {{"id": ..., "t": ...}}}}`; '
        f"the server sends it to every connected client, the sender included, and the sender's round trip ends "
        f"when its own broadcast comes back. Setup: {settings(latency)}. The figure is the largest client count "
        f"whose p95 round trip stayed within {limit:.0f} ms (every smaller step too; a step over the limit is "
        f"measured once more and the second measurement counts); the median over the passes."
    )
    if chart_path:
        head += ["", f"![Broadcast round trips against connected clients]({chart_path})"]
    rows = [
        "",
        f"| server | clients within {limit:.0f} ms p95 | per pass | vs websockets | server CPU us per delivered "
        "message | first step over the limit, per pass |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for result in peers:
        ratio = (
            f"{result['within'] / websockets['within']:.2f}x"
            if websockets and websockets["within"] and result is not websockets
            else ""
        )
        per_pass = ", ".join(f"{p['within']:,}" for p in result["passes"])
        stopped = ", ".join(_stop(p["stopped"]) for p in result["passes"])
        cpu = result.get("cpu_us_per_msg")
        cpu_cell = f"{cpu:.1f}" if cpu else "-"
        rows.append(f"| {result['label']} | {result['within']:,.0f} | {per_pass} | {ratio} | {cpu_cell} | {stopped} |")
    verdict = latency_verdict(latency)
    mark = "met" if verdict.met else "**missed**" if verdict.met is False else "not measured"
    rows += [
        "",
        f"Target: {verdict.target}: {verdict.measured}, {mark}. Server CPU per delivered message: the median "
        "over every step (all threads of the server; every request that came back reached every client).",
    ]
    busy = [
        f"{r['label']} {r['server_busy']:.0%} and {r['clients_busy']:.0%}"
        for r in peers
        if r.get("server_busy") is not None and r.get("clients_busy") is not None
    ]
    if busy:
        rows += [
            "",
            "CPU time per second of rounds (median over the steps), the server's and all client processes' "
            "together, as a share of one core: " + "; ".join(busy) + ". On a shared machine this is the share "
            "each got, not what it would have used. Linux shares a busy core between runnable threads, not "
            "processes: a thread-per-connection server fanning out from several threads at once (one per "
            "sender) gets more of it than a single-threaded server does.",
        ]
    curve = _curve_table(peers)
    parts = ["\n".join(head + rows), curve, _gap(latency, verdict), _profile(latency)]
    return "\n\n".join(p for p in parts if p)


def _gap(latency: dict, verdict) -> str:
    """Why the target is missed, from the run's own figures."""
    green, websockets = _peer(latency, GREEN), _peer(latency, "websockets_asyncio")
    if verdict.met is not False or not green or not websockets:
        return ""
    mine, theirs = green.get("cpu_us_per_msg"), websockets.get("cpu_us_per_msg")
    lines = ["### The gap", ""]
    text = f"asok_green serves {verdict.measured} where 1.5x was asked."
    busy = green.get("server_busy")
    if mine and theirs and busy is not None and busy >= 0.8:
        spread = "; ".join(
            f"{r['label']} {min(p['within'] for p in r['passes']):,}-{max(p['within'] for p in r['passes']):,}"
            for r in (green, websockets)
        )
        text += (
            f" It spends {mine:.1f} us of server CPU per delivered message against websockets' {theirs:.1f} us "
            f"({theirs / mine:.2f}x less). With its core busy {busy:.0%} of the time at the median step, a round "
            "trip is mostly the broadcasts queued ahead of it, so the client count should follow that ratio; "
            f"the passes spread over {spread} clients, wider than the gap to 1.5x. The fan-out is the send system "
            "call (the profile below): asok_green's own Python is a few percent of it."
        )
    elif mine and theirs:
        text += (
            f" It spends {mine:.1f} us of server CPU per delivered message against websockets' {theirs:.1f} us "
            f"({theirs / mine:.2f}x less), so a broadcast to the same clients keeps it busy for less time; the "
            "client count moves less than that because a round trip here is mostly waiting:"
        )
        if busy is not None:
            text += f" the server got {busy:.0%} of a core per second of rounds at the median step"
        pressure = latency.get("cpu_pressure")
        if pressure is not None:
            text += f", and some task was waiting for a CPU {pressure:.0%} of the time"
        text += (
            ". Every wake-up of the server and of the sender's client process waits its turn behind other "
            "people's work on the shared cores, on every server alike and whatever the server's own cost."
        )
    lines.append(text)
    return "\n".join(lines)


def _curve_table(peers: list[dict]) -> str:
    counts = sorted({step["clients"] for r in peers for step in r["curve"]})
    if not counts:
        return ""
    lines = [
        "Round trips per step, p50 / p95 in ms (median over the passes that measured the step; a peer stops "
        "at its first step over the limit):",
        "",
        "| clients | " + " | ".join(r["label"] for r in peers) + " |",
        "| ---: | " + " | ".join("---:" for _ in peers) + " |",
    ]
    for count in counts:
        cells = []
        for result in peers:
            step = next((s for s in result["curve"] if s["clients"] == count), None)
            cells.append(f"{_ms(step['p50_ms'])} / {_ms(step['p95_ms'])}" if step else "")
        lines.append(f"| {count:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _profile(latency: dict) -> str:
    profile = latency.get("profile")
    if not profile:
        return ""
    green = _peer(latency, GREEN)
    lines = [
        f"### asok_green's hot path at {profile['clients']:,} clients",
        "",
        f"py-spy sampling asok_green (`--nonblocking`, 250 Hz) for {profile['seconds']:g} s of rounds at "
        f"{profile['clients']:,} clients ({_past(green['within'], profile['clients'])}; "
        f"p50 {_ms(profile.get('p50_ms'))} ms, p95 {_ms(profile.get('p95_ms'))} ms while sampled; server CPU "
        f"{profile.get('cpu_us_per_msg') or 0:.2f} us per delivered message, "
        f"{profile.get('busy', 0):.0%} of its core busy)." + (f" {profile['note']}" if profile.get("note") else ""),
    ]
    summary = profile.get("summary") or {}
    if summary.get("samples"):
        lines += ["", "| share | line (self time) | code |", "| ---: | --- | --- |"]
        lines += [f"| {share:.1%} | `{name}` | {_code(name)} |" for name, share in summary["self"][:10]]
        lines += [
            "",
            "System calls are charged to the Python line that makes them; on loopback a `send` also runs the "
            "receiving side of TCP.",
        ]
        lines += ["", "| share | function (inclusive) |", "| ---: | --- |"]
        lines += [f"| {share:.1%} | `{name}` |" for name, share in summary["inclusive"][:12]]
    return "\n".join(lines)


def _code(where: str) -> str:
    """The source line of an asok_green ``file:line function`` entry, as inline code ("" for others)."""
    place = where.split(" ", 1)[0]
    path, _, line = place.rpartition(":")
    if not path.startswith("asok_green/") or not line.isdigit():
        return ""
    code = linecache.getline(str(REPO / path), int(line)).strip()
    return f"`{code[:80]}`" if code else ""


def _stop(why: str) -> str:
    """``"1,250"`` for "p95 passed 250 ms at 1,250 clients"; any other reason as it is."""
    match = re.fullmatch(r"p95 passed \d+ ms at ([\d,]+) clients", why)
    return match.group(1) if match else why


def _past(within: float, clients: int) -> str:
    return "its largest size" if clients <= within else f"above its figure of {within:,.0f}"


def replace_section(markdown: str, new_section: str) -> str:
    """``markdown`` with its latency section replaced by ``new_section`` (inserted if it had none)."""
    return sections.replace_section(markdown, new_section, INSERT_BEFORE)
