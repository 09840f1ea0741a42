"""The targets of issue 6, judged on one run's results (ratios between peers of the same run)."""

from __future__ import annotations

from dataclasses import dataclass

KB = 1000
GREEN = "asok_green"


@dataclass
class Verdict:
    """One target: what was asked, what was measured, met or not (None: could not be measured)."""

    key: str
    target: str
    measured: str
    met: bool | None
    shortfall: str = ""


def peer(run: dict, name: str) -> dict | None:
    """The results of peer ``name``, if it ran."""
    return next((p for p in run["peers"] if p["name"] == name), None)


def idle_at(result: dict | None, size: int, kind: str = "anonymous") -> dict | None:
    """The idle level of ``size`` connections (None if not measured or not reached)."""
    if not result:
        return None
    for level in result.get("idle", {}).get(kind, []):
        if level["target"] == size:
            return level
    return None


def fanout_at(result: dict | None, size: int) -> dict | None:
    """The fan-out measurement to ``size`` subscribers."""
    if not result:
        return None
    return result.get("fanout", {}).get(str(size))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def judge(run: dict) -> list[Verdict]:
    """Every target of the issue, in its order."""
    plan = run["plan"]
    green, gw, ws = peer(run, GREEN), peer(run, "gevent_websocket"), peer(run, "websockets_asyncio")
    verdicts: list[Verdict] = []
    mem_size = 10000 if 10000 in plan["sizes"] else plan["sizes"][-1]
    verdicts += _memory(green, gw, ws, mem_size)
    verdicts += _capacity(green, plan["sizes"][-1])
    verdicts += _fanout(green, gw, plan["fanout"])
    verdicts.append(_encode_once(run.get("encode_check")))
    verdicts += _rates(green, ws)
    verdicts.append(_http(green))
    if run.get("latency"):
        verdicts.append(latency_verdict(run["latency"]))
    if run.get("steady"):
        verdicts += steady_verdicts(run["steady"])
    return verdicts


#: Issue 23's targets for idle memory once connections have spoken.
STEADY_MAX = 3.0 * KB
NEVER_SPOKE_MAX = 2.4 * KB
PEAK_MAX = 0.10


def steady_verdicts(steady: dict) -> list[Verdict]:
    """Idle memory after speaking, the keep-alive peak, never-spoke memory and keep-alive CPU.

    ``steady`` is :func:`benchlib.steady.compare`'s result; the CPU target
    compares asok_green with the build named ``before``, when it ran.
    """
    builds = steady["builds"]
    mine = (builds.get(GREEN) or {}).get("median") or {}
    before = (builds.get("before") or {}).get("median") or {}
    size = steady["plan"]["connections"]
    out = []
    value = mine.get("steady")
    out.append(
        Verdict(
            "steady",
            f"at most {STEADY_MAX / KB:.1f} KB per connection at {size:,} once every one spoke (a keep-alive "
            "round, one message each way) and went quiet",
            f"{value / KB:.2f} KB"
            + (f" (before: {before['steady'] / KB:.2f} KB)" if before.get("steady") is not None else "")
            if value is not None
            else "not measured",
            None if value is None else value <= STEADY_MAX,
            f"{(value - STEADY_MAX) / KB:.2f} KB over" if value is not None and value > STEADY_MAX else "",
        )
    )
    peaks = [mine.get(k) for k in ("round_peak_over_settled", "held_peak_over_settled")]
    peaks = [p for p in peaks if p is not None]
    peak = max(peaks) if peaks else None
    out.append(
        Verdict(
            "keepalive-peak",
            f"RSS during a keep-alive round at most {PEAK_MAX:.0%} above the RSS it settles at",
            f"{peak:+.1%}"
            + (
                f" (before: {before['round_peak_over_settled']:+.1%})"
                if before.get("round_peak_over_settled") is not None
                else ""
            )
            if peak is not None
            else "not measured",
            None if peak is None else peak <= PEAK_MAX,
            f"{peak:+.1%}" if peak is not None and peak > PEAK_MAX else "",
        )
    )
    value = mine.get("never_spoke")
    out.append(
        Verdict(
            "never-spoke",
            f"at most {NEVER_SPOKE_MAX / KB:.1f} KB per connection at {size:,} before any has spoken",
            f"{value / KB:.2f} KB" if value is not None else "not measured",
            None if value is None else value <= NEVER_SPOKE_MAX,
            f"{(value - NEVER_SPOKE_MAX) / KB:.2f} KB over" if value is not None and value > NEVER_SPOKE_MAX else "",
        )
    )
    a, b = mine.get("held_cpu_percent"), before.get("held_cpu_percent")
    out.append(
        Verdict(
            "keepalive-cpu",
            f"server CPU while holding {size:,} quiet connections (keep-alive) no higher than the build before",
            f"{a:.2f}% vs {b:.2f}% of a core" if a is not None and b is not None else "not measured",
            None if a is None or b is None else a <= b,
            f"{a / b:.2f}x" if a is not None and b and a > b else "",
        )
    )
    return out


#: Clients within the p95 limit: asok_green against websockets (asyncio).
LATENCY_FACTOR = 1.5


def latency_verdict(latency: dict) -> Verdict:
    """Clients served within the p95 round-trip limit: at least 1.5x websockets (asyncio)."""
    limit = latency["plan"]["limit_ms"]
    by_name = {p["name"]: p for p in latency["peers"]}
    mine, theirs = by_name.get(GREEN), by_name.get("websockets_asyncio")
    target = f"clients within a {limit:.0f} ms p95 broadcast round trip at least {LATENCY_FACTOR}x websockets (asyncio)"
    if not mine or not theirs:
        return Verdict("latency", target, "not measured", None)
    a, b = mine["within"], theirs["within"]
    ratio = _ratio(a, b)
    if ratio is None:  # one of them served no step within the limit
        return Verdict("latency", target, f"{a:,.0f} vs {b:,.0f} clients", None if a == b else a > b)
    return Verdict(
        "latency",
        target,
        f"{ratio:.2f}x ({a:,.0f} vs {b:,.0f} clients)",
        ratio >= LATENCY_FACTOR,
        f"{ratio:.2f}x instead of {LATENCY_FACTOR}x" if ratio < LATENCY_FACTOR else "",
    )


def _memory(green, gw, ws, size: int) -> list[Verdict]:
    level = idle_at(green, size)
    mine = level["per_conn"] if level and level["open"] >= 0.98 * size else None
    out = [
        Verdict(
            "memory",
            f"at most 10 KB per idle connection at {size:,}",
            f"{mine / KB:.1f} KB" if mine else "not measured",
            None if mine is None else mine <= 10 * KB,
            f"{mine / KB - 10:.1f} KB ({mine / (10 * KB):.2f}x) over" if mine and mine > 10 * KB else "",
        )
    ]
    for other, label, factor in ((gw, "bare gevent-websocket", 2.0), (ws, "websockets", 1.4)):
        theirs = idle_at(other, size)
        ratio = _ratio(theirs["per_conn"] if theirs else None, mine)
        out.append(
            Verdict(
                f"memory-vs-{label}",
                f"{factor}x less than {label} per idle connection",
                f"{ratio:.2f}x ({theirs['per_conn'] / KB:.1f} KB vs {mine / KB:.1f} KB)" if ratio else "not measured",
                None if ratio is None else ratio >= factor,
                f"{ratio:.2f}x instead of {factor}x" if ratio and ratio < factor else "",
            )
        )
    return out


def _capacity(green, size: int) -> list[Verdict]:
    level = idle_at(green, size)
    held = level["open"] if level else 0
    final = (green or {}).get("fanout_all") or (green or {}).get("fanout", {}).get(str(size))
    delivered = final["delivered"] if final else 0
    return [
        Verdict(
            "capacity",
            f"{size:,} idle connections held by one process",
            f"{held:,} held",
            held >= size if green else None,
            f"{size - held:,} short" if green and held < size else "",
        ),
        Verdict(
            "capacity-broadcast",
            f"a broadcast to all {size:,} delivered",
            f"{delivered:,} of {held:,} got it" if final else "not measured",
            None if not final else (delivered >= held and held >= size),
            f"{held - delivered:,} missed" if final and delivered < held else "",
        ),
    ]


def _fanout(green, gw, sizes: list[int]) -> list[Verdict]:
    out = []
    for size in sizes:
        mine, theirs = fanout_at(green, size), fanout_at(gw, size)
        a = mine.get("cpu_us_per_msg") if mine else None
        b = theirs.get("cpu_us_per_msg") if theirs else None
        ratio = _ratio(a, b)
        out.append(
            Verdict(
                f"fanout-{size}",
                f"fan-out CPU per delivered message to {size:,} within 1.2x of bare gevent-websocket",
                f"{ratio:.2f}x ({a:.2f} us vs {b:.2f} us)" if ratio else "not measured",
                None if ratio is None else ratio <= 1.2,
                f"{ratio:.2f}x instead of at most 1.2x" if ratio and ratio > 1.2 else "",
            )
        )
    return out


def _encode_once(check: dict | None) -> Verdict:
    if not check or "error" in check:
        reason = check.get("error") if check else "not checked"
        return Verdict("encode-once", "JSON encoded once per broadcast", f"could not check: {reason}", None)
    once = check["dumps_calls"] == 1 and check["distinct_frames"] == 1
    return Verdict(
        "encode-once",
        "JSON encoded once per broadcast, not per recipient",
        f"{check['dumps_calls']} json.dumps call(s) and {check['distinct_frames']} distinct frame object(s) "
        f"for {check['recipients']} recipients",
        once,
        "" if once else "encoded more than once",
    )


def _rates(green, ws) -> list[Verdict]:
    a = (green or {}).get("echo", {}).get("rate")
    b = (ws or {}).get("echo", {}).get("rate")
    ratio = _ratio(a, b)
    echo = Verdict(
        "echo",
        "echo throughput at least that of websockets (asyncio)",
        f"{ratio:.2f}x ({a:,.0f}/s vs {b:,.0f}/s)" if ratio else "not measured",
        None if ratio is None else ratio >= 1.0,
        f"{(1 - ratio) * 100:.0f}% below" if ratio and ratio < 1 else "",
    )
    return [echo, *_handshakes(green, ws)]


def _handshakes(green, ws) -> list[Verdict]:
    mine, theirs = (green or {}).get("handshakes", {}), (ws or {}).get("handshakes", {})
    rate = _ratio(mine.get("rate"), theirs.get("rate"))
    cpu = _ratio(mine.get("cpu_us"), theirs.get("cpu_us"))
    return [
        Verdict(
            "handshakes",
            "handshake rate at least 1.2x that of websockets (asyncio)",
            f"{rate:.2f}x ({mine['rate']:,.0f}/s vs {theirs['rate']:,.0f}/s)" if rate else "not measured",
            None if rate is None else rate >= 1.2,
            f"{rate:.2f}x instead of at least 1.2x" if rate and rate < 1.2 else "",
        ),
        Verdict(
            "handshakes",
            "server CPU per handshake at most 0.8x that of websockets (asyncio)",
            f"{cpu:.2f}x ({mine['cpu_us']:.0f} us vs {theirs['cpu_us']:.0f} us)" if cpu else "not measured",
            None if cpu is None else cpu <= 0.8,
            f"{cpu:.2f}x instead of at most 0.8x" if cpu and cpu > 0.8 else "",
        ),
    ]


def _http(green) -> Verdict:
    http = (green or {}).get("http") or {}
    plain, held = (http.get("plain") or {}).get("rate"), (http.get("with_idle") or {}).get("rate")
    ratio = _ratio(held, plain)
    idle = http.get("idle", 0)
    return Verdict(
        "http",
        f"HTTP requests/s with {idle:,} idle WebSockets at least 90% of the rate without",
        f"{ratio:.0%} ({held:,.0f} vs {plain:,.0f} requests/s)" if ratio else "not measured",
        None if ratio is None else ratio >= 0.9,
        f"{ratio:.0%} instead of 90%" if ratio and ratio < 0.9 else "",
    )
