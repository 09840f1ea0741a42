"""The PNG chart of a run (matplotlib, no display needed)."""

from __future__ import annotations

import pathlib

COLOURS = {
    "asok_green": "#2e7d32",
    "asok_threaded": "#c62828",
    "gevent_websocket": "#1565c0",
    "websockets_asyncio": "#ef6c00",
    "uvicorn_websockets": "#6a1b9a",
    "uvicorn_wsproto": "#ab47bc",
    "aiohttp": "#00838f",
    "picows": "#f9a825",
    "granian": "#8d6e63",
    "socketify": "#37474f",
}


def draw(run: dict, path: pathlib.Path) -> None:
    """One panel per row of the table, the peers as bars sorted best first, asok_green in green; the floor
    of this machine as a dashed line where it applies, and the 100,000 idle connections when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(run)
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(18, 4.2 * rows), squeeze=False)
    for ax, (title, values, lower, fmt, line) in zip([a for row in axes for a in row], panels):
        _ranked_bars(ax, title, values, lower, fmt, line)
    for ax in [a for row in axes for a in row][len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"asok_green (green) and its peers, one run on {run['machine']['cores']} cores ({run['date']}); "
        "best first in each panel",
        fontsize=13,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _panels(run: dict) -> list[tuple[str, list[tuple[dict, float | None]], bool, str, tuple | None]]:
    """(title, [(peer result, value)], lower is better, number format, (floor value, its label) or None)."""
    from .field import rows

    floor = run.get("floor") or {}
    by_key = {row.key: row for row in rows(run)}
    peers = [p for p in run["peers"] if not p["name"].endswith("_before")]
    wanted = [
        (f"idle-{run['plan']['sizes'][-1]}", "KB per idle connection at {n}"),
        (f"fanout-cpu-{max(run['plan']['fanout'])}", "Fan-out to {n}: us of server CPU per delivery"),
        (f"fanout-ms-{max(run['plan']['fanout'])}", "Fan-out to {n}: ms to the last subscriber"),
        ("latency", "Clients within a 250 ms p95 broadcast round trip"),
        ("handshakes", "Handshakes per second"),
        ("handshake-cpu", "us of server CPU per handshake"),
        ("echo", "Echo messages per second"),
        ("echo-cpu", "us of server CPU per echoed message"),
    ]
    panels = []
    for key, title in wanted:
        row = by_key.get(key)
        if row is None:
            continue
        size = key.rsplit("-", 1)[-1]
        line = None
        fanout_floor = (floor.get("fanout") or {}).get(size) or {}
        if key.startswith("fanout-cpu") and "cpu_us_per_msg" in fanout_floor:
            line = (fanout_floor["cpu_us_per_msg"], "floor: send() alone")
        elif key.startswith("fanout-ms") and "ms_per_round_best" in fanout_floor:
            line = (fanout_floor["ms_per_round_best"], "floor: the send() loop")
        elif key == "handshake-cpu" and "cpu_us_each" in (floor.get("handshake") or {}):
            line = (floor["handshake"]["cpu_us_each"], "floor: the system calls")
        label = f"{int(size):,}" if size.isdigit() else ""
        better = "lower" if row.lower_is_better else "higher"
        panels.append(
            (
                f"{title.format(n=label)} ({better} is better)",
                [(p, row.value(p, run)) for p in peers],
                row.lower_is_better,
                row.fmt,
                line,
            )
        )
    hundred = run.get("hundred_k")
    if hundred:
        values = [
            ({"name": r["name"], "label": f"{r['label']} ({r['kind']})"}, r["rss"] / 1e6 if r.get("rss") else None)
            for r in hundred["results"]
        ]
        title = f"{hundred['connections']:,} idle connections: total server RSS, MB (lower is better)"
        panels.append((title, values, True, "{:,.0f}", (600, "target 600 MB")))
    return panels


def _ranked_bars(ax, title: str, values: list, lower: bool, fmt: str, line: tuple | None) -> None:
    """Horizontal bars, best at the top; a peer without a figure is listed at the bottom as not measured."""
    present = [(r, v) for r, v in values if v]
    present.sort(key=lambda item: item[1], reverse=not lower)
    absent = [r for r, v in values if not v]
    labels = [r["label"] for r, _ in present] + [f"{r['label']} (no figure)" for r in absent]
    heights = [v for _, v in present] + [0] * len(absent)
    ys = list(range(len(labels)))[::-1]
    colours = [_colour(r) for r, _ in present] + ["#cccccc"] * len(absent)
    ax.barh(ys, heights, color=colours)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=9)
    for tick in ax.get_yticklabels():
        if tick.get_text().startswith("asok_green"):
            tick.set_fontweight("bold")
    for y, (_, value) in zip(ys, present):
        ax.annotate(f" {fmt.format(value)}", (value, y), va="center", fontsize=8)
    if line:
        ax.axvline(line[0], color="black", linestyle="--", linewidth=1)
        ax.annotate(f" {line[1]} {fmt.format(line[0])}", (line[0], ys[-1] - 0.45 if ys else 0), fontsize=8)
    ax.set_title(title, fontsize=10)
    if present:
        ax.set_xlim(0, max(max(heights), line[0] if line else 0) * 1.22)
    ax.tick_params(axis="x", labelsize=8)


def draw_latency(latency: dict, path: pathlib.Path, date: str = "") -> None:
    """The latency-at-scale curves alone (for a run of that test only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6))
    latency_curves(ax, latency)
    if date:
        fig.suptitle(f"asok_green and peers, broadcast round trips ({date})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def latency_curves(ax, latency: dict) -> None:
    """p50 (dashed) and p95 (solid) broadcast round trip against connected clients, one colour per peer."""
    import matplotlib.ticker

    limit = latency["plan"]["limit_ms"]
    for result in latency["peers"]:
        curve = [s for s in result["curve"] if s["p95_ms"] == s["p95_ms"]]  # nan: no sample
        if not curve:
            continue
        clients = [s["clients"] for s in curve]
        capped = [min(s["p95_ms"], 10_000) for s in curve]  # a timeout (inf) is drawn at the top
        ax.plot(clients, capped, "-", marker="o", color=_colour(result), label=f"{result['label']} p95")
        p50 = [min(s["p50_ms"], 10_000) for s in curve]
        ax.plot(clients, p50, "--", marker="x", color=_colour(result), alpha=0.6, label=f"{result['label']} p50")
        if result["within"]:
            ax.annotate(
                f"{result['within']:,.0f}",
                (result["within"], limit),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
                color=_colour(result),
            )
    ax.axhline(limit, color="grey", linestyle=":", linewidth=1)
    ax.text(0.01, limit, f" p95 limit {limit:.0f} ms", transform=ax.get_yaxis_transform(), va="bottom", color="grey")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    # Minor ticks: only 2x and 5x a power of ten carry a label, so several decades stay readable.
    ax.yaxis.set_minor_formatter(
        matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else "")
    )
    ax.set_xlabel("connected clients")
    ax.set_ylabel("round trip, ms (solid p95, dashed p50)")
    ax.set_title(
        f"Broadcast round trip against connected clients ({latency['senders']} senders per round; "
        "higher client count within the limit is better)",
        fontsize=10,
    )
    ax.legend(fontsize=8, ncol=2)


def _colour(result: dict) -> str:
    return COLOURS.get(result["name"], "#555555")
