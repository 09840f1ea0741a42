"""Idle memory never-spoke and steady as text: the printed summary and BENCHMARKS.md's section."""

from __future__ import annotations

from . import sections
from .targets import GREEN, KB, steady_verdicts

TITLE = "## Idle memory: never spoke and steady"
#: Sections of BENCHMARKS.md this one goes before when it is added to an existing file.
INSERT_BEFORE = ("## Latency at scale", "## Handshakes", "## Idle memory: what", "## Cross-node", "## Method")

#: What the allocators said when the steady figure was first looked into (scripts/idle_steady.py --diagnose).
FINDINGS = """\
**Where the memory went.** Measured with `scripts/idle_steady.py --diagnose` (glibc's `mallinfo2`,
pymalloc's arenas from `sys._debugmallocstats`, tracemalloc snapshots) on the tree before this change,
10,000 connections: Python objects alive grew by about 30 bytes per connection from "never spoke" to
"steady" (pymalloc's allocated blocks 41.3 MiB, then 41.6 MiB; tracemalloc agrees), yet RSS grew by 44 MiB.
The rest was memory the allocators kept: pymalloc went from 43 to 68 arenas of 1 MiB (8.3 MiB of free
blocks inside them) and glibc's heap from 9.6 to 27.8 MiB with 19.4 MiB of it free. The keep-alive pinged
all 10,000 connections in one sweep; the 10,000 pongs woke 10,000 reader greenlets in one loop turn, each
waiting a second for more data with its C stack copied to the heap, its frames and its timer. Freed a
second later, that memory stayed: a few long-lived objects made during the burst (a `last_seen` float, a
watcher callback, a parser buffer per connection) pinned nearly every arena and heap page it had used.
No buffer, reader or greenlet was kept per connection. `malloc_trim(0)` after everyone had spoken
gave back the glibc part only (RSS 114.0 MiB, then 94.0 MiB: 2 KB per connection still kept by
pymalloc's arenas), and `MALLOC_ARENA_MAX=1` changed nothing (6.9 KB steady: the server allocates from
one thread).

**What changed.** The read watcher's callback peeks at what arrived: pongs are consumed there (not
even parsed), pings answered there, with no greenlet; anything else stays in the socket and the
connection goes on a queue of reads, served by a few reader greenlets in turn (one more whenever a
reader's handler waits), not one greenlet per speaking client. At most 128 readers wait for a client's
next message at once. The frame parser, the send queue and the inflater exist only while in use. The
keep-alive looks at a slice of the connections every 0.5 s, so connections opened together are pinged,
and answer, spread over its period. With these, the same diagnosis on 10,000 connections: pymalloc kept
40 arenas from "never spoke" to "steady", and glibc's heap grew by 1.2 MiB (about 0.1 KB per connection).
"""


def _settings(builds: dict) -> str:
    settings = next(iter(builds.values()), {}).get("settings") or {}
    if not settings:
        return "with its defaults (a keep-alive ping after 20 s of silence)."
    return "with " + ", ".join(f"`{key}={value}`" for key, value in sorted(settings.items())) + "."


def _kb(value: float | None) -> str:
    return f"{value / KB:.2f}" if value is not None else "-"


def _pct(value: float | None) -> str:
    return f"{value:+.1%}" if value is not None else "-"


def _num(value: float | None, fmt: str) -> str:
    return fmt.format(value) if value is not None else "-"


def rows(steady: dict) -> list[list[str]]:
    """One row per build: its medians."""
    out = []
    for name, build in steady["builds"].items():
        m = build.get("median") or {}
        out.append(
            [
                name,
                _kb(m.get("never_spoke")),
                _kb(m.get("after_round")),
                _kb(m.get("after_message")),
                _kb(m.get("steady")),
                _pct(m.get("round_peak_over_settled")),
                _pct(m.get("held_peak_over_settled")),
                _pct(m.get("message_peak_over_settled")),
                _num(m.get("held_cpu_percent"), "{:.2f}"),
                _num(m.get("held_cpu_us_per_ping"), "{:.0f}"),
            ]
        )
    return out


HEADER = [
    "build",
    "never spoke, KB/conn",
    "after a keep-alive round",
    "after one message each way",
    "steady",
    "RSS peak in the first keep-alive round",
    "RSS peak while held",
    "RSS peak while every client spoke",
    "CPU while held, % of a core",
    "server CPU per ping answered, us",
]


def _spread(steady: dict) -> str:
    parts = []
    for name, build in steady["builds"].items():
        values = [r.get("steady") for r in build["rounds"]]
        parts.append(f"{name} " + ", ".join(_kb(v) for v in values))
    return "; ".join(parts)


def text(steady: dict) -> str:
    """The printed summary: the table and the verdicts."""
    table = [HEADER, *rows(steady)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in table
    ]
    lines.append(f"steady KB/conn per round: {_spread(steady)}")
    for v in steady_verdicts(steady):
        mark = "met" if v.met else "MISSED" if v.met is False else "n/a"
        lines.append(f"  [{mark}] {v.target}: {v.measured}")
    return "\n".join(lines)


def section(steady: dict | None, note: str = "") -> str:
    """BENCHMARKS.md's section (empty without a measurement); ``note`` says when and how it was measured."""
    if not steady:
        return ""
    plan = steady["plan"]
    size = plan["connections"]
    builds = steady["builds"]
    others = [
        f"`{name}` (the asok_green package of `{build['package']}`"
        + (f", commit {build['commit']})" if build.get("commit") else ")")
        for name, build in builds.items()
        if name != GREEN
    ]
    method = (
        f"{size:,} idle connections to `/room`, opened by two loadgen processes on their own 127.0.0.x addresses "
        "(they answer pings as browsers do), against a fresh `asok serve --gevent` per round on the bench project, "
        + _settings(builds)
        + " asok_green as in this tree"
        + (f" and {', '.join(others)}" if others else "")
        + f" take turns, {steady['rounds']} rounds each, the order shifting by one each round; every figure is "
        "the median of the rounds. In each round: *never spoke*, RSS growth per connection once all are open; "
        "*after a keep-alive round*, once every connection has answered a ping; *after one message each way*, "
        "once every connection has sent one message (all in the same instant) and received one broadcast; "
        f"*steady*, held {plan['hold_seconds']:.0f} s more (at least one more ping each). RSS peaks are sampled "
        "every 0.1 s and given over the RSS the phase settled at (whole process). CPU while held: all of the "
        "server's CPU time over that hold, in which it only keeps the connections alive."
    )
    header = "| " + " | ".join(HEADER) + " |\n| --- |" + " ---: |" * (len(HEADER) - 1)
    body = "\n".join("| " + " | ".join(row) + " |" for row in rows(steady))
    verdicts = "\n".join(
        f"| {v.target} | {v.measured} | {'met' if v.met else 'MISSED' if v.met is False else 'n/a'} |"
        for v in steady_verdicts(steady)
    )
    parts = [
        TITLE,
        (note + " " if note else "") + method,
        header + "\n" + body,
        f"Steady KB per connection, round by round: {_spread(steady)}.",
        "| target | measured | verdict |\n| --- | --- | --- |\n" + verdicts,
        FINDINGS,
    ]
    return "\n\n".join(p.strip() for p in parts)


def replace_section(markdown: str, new_section: str) -> str:
    """``markdown`` with this section replaced by ``new_section`` (inserted if it had none)."""
    return sections.replace_section(markdown, new_section, INSERT_BEFORE)
