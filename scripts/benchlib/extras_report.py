"""BENCHMARKS.md sections of the runs beside the peers: cross-node fan-out and the cost of metrics."""

from __future__ import annotations


def cluster_section(cluster: dict | None) -> str:
    """Cross-node fan-out: messages delivered per second with 2 workers against 1."""
    if not cluster:
        return ""
    head = "## Cross-node fan-out (Redis)\n\n"
    rows = "\n".join(
        f"| {r['workers']} | {r['delivered']:,} | {r['seconds']:.2f} | {r['per_second']:,.0f} |"
        for r in cluster["results"]
    )
    text = (
        f"{cluster['clients']} receivers split across the workers, {cluster['messages']} broadcasts of "
        f"{cluster['size']} bytes each, published by one client; receivers run in a separate process, "
        f"Redis on the same {cluster['cpus']} cores.\n\n"
        "| workers | delivered | seconds | messages/s |\n| ---: | ---: | ---: | ---: |\n" + rows
    )
    if cluster.get("skipped"):
        text += f"\n\nTwo workers not measured: {cluster['skipped']}."
    elif cluster.get("speedup"):
        text += f"\n\n2 workers deliver **{cluster['speedup']:.2f}x** the messages per second of 1."
    return head + text


def metrics_cost_section(cost: dict | None) -> str:
    """What Prometheus metrics cost: fan-out CPU per delivered message and idle memory, off against on."""
    if not cost:
        return ""
    variants = cost["variants"]
    rows = "\n".join(
        f"| {name} | {v['cpu_us_per_msg']:.2f} | {v['bytes_per_idle_conn']:,.0f} |"
        for name, v in variants.items()
        if v.get("cpu_us_per_msg") is not None and v.get("bytes_per_idle_conn") is not None
    )
    text = (
        "## Metrics cost\n\n"
        f"asok_green with Prometheus metrics off (`METRICS_ENABLED=false`) and on, side by side "
        f"(`scripts/metrics_cost.py`): server CPU per delivered message in {cost['rounds']} alternating "
        f"rounds of a broadcast to {cost['subscribers']:,} subscribers (median), and RSS per idle "
        f"connection at {cost['idle']:,}.\n\n"
        "| asok_green | us per delivered message | bytes per idle connection |\n| --- | ---: | ---: |\n" + rows
    )
    if cost.get("cpu_overhead_percent") is not None:
        text += (
            f"\n\nMetrics on: **{cost['cpu_overhead_percent']:+.1f}%** CPU per delivered message (budget 5%), "
            f"**{cost.get('bytes_overhead_per_conn', 0):+.0f} B** per idle connection (budget 200 B)"
        )
        scrape = variants.get("metrics on", {}).get("scrape_cpu_ms")
        text += f"; one scrape costs {scrape:.1f} ms of server CPU." if scrape else "."
    return text
