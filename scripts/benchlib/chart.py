"""The PNG chart of a run (matplotlib, no display needed)."""

from __future__ import annotations

import pathlib

from .targets import KB, fanout_at

COLOURS = {
    "asok_green": "#2e7d32",
    "asok_threaded": "#c62828",
    "gevent_websocket": "#1565c0",
    "websockets_asyncio": "#ef6c00",
}


def draw(run: dict, path: pathlib.Path) -> None:
    """Six panels: memory per idle connection, fan-out CPU and latency, echo, handshakes, HTTP; a seventh,
    wide, for the broadcast round trips against connected clients when the run measured them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = run.get("latency")
    fig = plt.figure(figsize=(17, 14 if latency else 9))
    grid = fig.add_gridspec(3 if latency else 2, 3)
    axes = [[fig.add_subplot(grid[row, col]) for col in range(3)] for row in range(2)]
    if latency:
        latency_curves(fig.add_subplot(grid[2, :]), latency)
    _memory(axes[0][0], run)
    _fanout(axes[0][1], run)
    _latency(axes[0][2], run)
    _rate(axes[1][0], run, "echo", f"Echo messages/s, {run['plan']['echo_clients']} clients (higher is better)")
    _rate(axes[1][1], run, "handshakes", "WebSocket handshakes/s (higher is better)")
    _http(axes[1][2], run)
    fig.suptitle(f"asok_green and peers, one run on {run['machine']['cores']} cores ({run['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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


def _memory(ax, run: dict) -> None:
    for result in run["peers"]:
        for kind, style in (("anonymous", "-"), ("authenticated", "--")):
            levels = [lv for lv in result.get("idle", {}).get(kind, []) if lv.get("per_conn")]
            if not levels:
                continue
            ax.plot(
                [lv["open"] for lv in levels],
                [lv["per_conn"] / KB for lv in levels],
                style,
                marker="o",
                color=_colour(result),
                label=f"{result['label']} ({kind})",
            )
    ax.axhline(10, color="grey", linestyle=":", linewidth=1)
    ax.text(0.01, 10, " target 10 KB", transform=ax.get_yaxis_transform(), va="bottom", color="grey", fontsize=8)
    ax.set_title("Server RSS per idle connection (lower is better)", fontsize=10)
    ax.set_xlabel("idle connections")
    ax.set_ylabel("KB per connection")
    ax.set_yscale("log")
    ax.legend(fontsize=7)


def _bars(ax, groups: list[str], series: list[tuple[dict, list[float | None]]], fmt: str) -> None:
    width = 0.8 / max(1, len(series))
    for i, (result, values) in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        heights = [v or 0 for v in values]
        bars = ax.bar(xs, heights, width, color=_colour(result), label=result["label"])
        for bar, value in zip(bars, values):
            if value:
                ax.annotate(
                    fmt.format(value),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups)
    ax.legend(fontsize=7)


def _fanout(ax, run: dict) -> None:
    sizes = run["plan"]["fanout"]
    series = [(r, [(fanout_at(r, n) or {}).get("cpu_us_per_msg") for n in sizes]) for r in run["peers"]]
    _bars(ax, [f"{n:,} subscribers" for n in sizes], series, "{:.1f}")
    ax.set_title("Broadcast: server CPU per delivered message (lower is better)", fontsize=10)
    ax.set_ylabel("microseconds")


def _latency(ax, run: dict) -> None:
    sizes = run["plan"]["fanout"]
    series = [(r, [(fanout_at(r, n) or {}).get("latency_ms") for n in sizes]) for r in run["peers"]]
    _bars(ax, [f"{n:,} subscribers" for n in sizes], series, "{:.0f}")
    ax.set_title("Broadcast: ms until the last subscriber has it (lower is better)", fontsize=10)
    ax.set_ylabel("milliseconds")


def _rate(ax, run: dict, key: str, title: str) -> None:
    peers = run["peers"]
    values = [r.get(key, {}).get("rate") or 0 for r in peers]
    bars = ax.bar([r["label"] for r in peers], values, color=[_colour(r) for r in peers])
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)


def _http(ax, run: dict) -> None:
    idle = run["plan"]["http_idle"]

    def rate(result: dict, key: str) -> float | None:
        entry = (result.get("http") or {}).get(key)
        return entry["rate"] if entry else None

    series = [(r, [rate(r, "plain"), rate(r, "with_idle")]) for r in run["peers"]]
    _bars(ax, ["no WebSockets", f"{idle:,} idle WebSockets"], series, "{:,.0f}")
    ax.set_title("HTTP requests/s on the peer's HTTP port (wrk)", fontsize=10)
