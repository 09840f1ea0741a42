"""The results table: one row per measurement, one column per peer."""

from __future__ import annotations

from .targets import GREEN, KB, fanout_at, idle_at

NA = "n/a"


def _kb(level: dict | None, size: int) -> str:
    if level is None:
        return "not reached"
    if level["open"] < 0.98 * size:
        per = f", {level['per_conn'] / KB:.1f} KB" if level["per_conn"] else ""
        return f"reached {level['open']:,}{per}"
    return f"{level['per_conn'] / KB:.1f}" if level["per_conn"] is not None else "-"


def _idle_cell(result: dict, size: int, kind: str) -> str:
    if kind == "authenticated" and "authenticated" not in result.get("idle", {}):
        return NA
    levels = result.get("idle", {}).get(kind, [])
    level = idle_at(result, size, kind)
    if level is None and levels:
        return f"not tried (stopped at {levels[-1]['open']:,})"
    return _kb(level, size)


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return fmt.format(value) if value is not None else "-"


def _http(result: dict, key: str) -> str:
    http = result.get("http") or {}
    entry = http.get(key)
    return _num(entry["rate"]) if entry else "-"


def _http_ratio(result: dict) -> str:
    http = result.get("http") or {}
    plain, held = http.get("plain"), http.get("with_idle")
    if not plain or not held or not plain["rate"]:
        return "-"
    return f"{held['rate'] / plain['rate']:.0%}"


def _final(result: dict, size: int) -> str:
    final = result.get("fanout_all") or fanout_at(result, size)
    if not final:
        return "-"
    latency = final.get("latency_ms")
    when = f" in {latency:.0f} ms" if latency is not None else ""
    return f"{final['delivered']:,}/{final['armed']:,}{when}"


def rows(run: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(column headers, [(row label, cells)]) for the run's peers."""
    plan, peers = run["plan"], run["peers"]
    header = ["", *[p["label"] for p in peers]]
    out: list[tuple[str, list[str]]] = []
    for kind in ("anonymous", "authenticated"):
        for size in plan["sizes"]:
            out.append((f"KB/idle conn, {size:,} {kind}", [_idle_cell(p, size, kind) for p in peers]))
    out += _steady_rows(run.get("steady"), peers)
    top = plan["sizes"][-1]
    out.append((f"OS threads at {top:,} idle", [_threads(p, top) for p in peers]))
    for kind in ("anonymous", "authenticated"):
        out.append((f"open files per idle conn, {kind}", [_files(p, kind) for p in peers]))
    for size in plan["fanout"]:
        out.append(
            (
                f"fan-out {size:,}: server CPU us/msg",
                [_num((fanout_at(p, size) or {}).get("cpu_us_per_msg"), "{:.2f}") for p in peers],
            )
        )
        out.append(
            (
                f"fan-out {size:,}: ms to last subscriber",
                [_num((fanout_at(p, size) or {}).get("latency_ms"), "{:.1f}") for p in peers],
            )
        )
    out.append((f"broadcast to all {top:,}: delivered", [_final(p, top) for p in peers]))
    out.append((f"echo msgs/s, {plan['echo_clients']} clients", [_num(p.get("echo", {}).get("rate")) for p in peers]))
    out.append(("echo: server CPU us/msg", [_num(p.get("echo", {}).get("cpu_us"), "{:.1f}") for p in peers]))
    out.append(("handshakes/s", [_num(p.get("handshakes", {}).get("rate")) for p in peers]))
    out.append(
        ("handshake: server CPU us each", [_num(p.get("handshakes", {}).get("cpu_us"), "{:.0f}") for p in peers])
    )
    out.append(("HTTP req/s, no WebSockets", [_http(p, "plain") for p in peers]))
    out.append((f"HTTP req/s, {plan['http_idle']:,} idle WebSockets", [_http(p, "with_idle") for p in peers]))
    out.append(("HTTP with idle / without", [_http_ratio(p) for p in peers]))
    return header, out


def _steady_rows(steady: dict | None, peers: list[dict]) -> list[tuple[str, list[str]]]:
    """asok_green once its connections have spoken (benchlib/steady.py); the peers are not measured so."""
    if not steady:
        return []
    mine = (steady["builds"].get(GREEN) or {}).get("median") or {}
    value, peak = mine.get("steady"), mine.get("round_peak_over_settled")

    def cells(text: str) -> list[str]:
        return [text if p["name"] == GREEN else "not measured" for p in peers]

    return [
        (
            f"KB/idle conn, {steady['plan']['connections']:,} steady (spoke, then quiet)",
            cells(f"{value / KB:.1f}" if value is not None else "-"),
        ),
        ("RSS peak in a keep-alive round, over settled", cells(f"{peak:+.0%}" if peak is not None else "-")),
    ]


def _files(result: dict, kind: str) -> str:
    if kind == "authenticated" and "authenticated" not in result.get("idle", {}):
        return NA
    levels = result.get("idle", {}).get(kind, [])
    per = levels[-1].get("files_per_conn") if levels else None
    return f"{per:.1f}" if per is not None else "-"


def _threads(result: dict, size: int) -> str:
    level = idle_at(result, size)
    if level is None:
        levels = result.get("idle", {}).get("anonymous", [])
        level = levels[-1] if levels else None
    return f"{level['threads']:,}" if level else "-"


def text(run: dict) -> str:
    """The table in plain text, columns aligned."""
    header, body = rows(run)
    table = [header, *[[label, *cells] for label, cells in body]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(run: dict) -> str:
    """The table in Markdown."""
    header, body = rows(run)
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in body]
    return "\n".join(lines)
