"""What an idle asok_green connection is made of, and what proposed changes would save.

Measurements on asok_green run through scripts/peers/asok_green_variant.py:

1. tracemalloc: the allocation sites that grow with the number of idle
   connections (snapshot before and after opening them), per connection;
2. RSS per idle connection as shipped and, when that is over the 10 KB target,
   with parts of pywsgi's per-request state dropped after the upgrade (each
   part alone, then all of them) and with no greenlet while idle;
3. echo and handshake rates (and server CPU per unit) as shipped and with the
   reading greenlet lingering for more data before it parks;
4. HTTP requests/s with TCP_NODELAY set on accepted sockets, without and with
   idle WebSockets held.
"""

from __future__ import annotations

import linecache
import pathlib
import shutil
import signal
import time
import tracemalloc

from . import load, procstat
from .plan import Plan
from .project import REPO
from .rates import interleaved
from .scenario import progress, warm_up
from .servers import PEERS_BY_NAME, ServerProcess, start_server, variant_argv

#: (name, options for asok_green_variant.py, what it changes)
VARIANTS = (
    ("as shipped", [], "asok_green unchanged (through the variant runner, for a like-for-like baseline)"),
    ("drop rfile", ["--drop", "rfile"], "release pywsgi's BufferedReader (8 KiB buffer) and wsgi.input"),
    ("drop environ", ["--drop", "environ"], "empty the WSGI environ dict"),
    ("drop headers", ["--drop", "headers"], "release the parsed request-header message"),
    ("drop all", ["--drop", "rfile,environ,headers,misc"], "all of the above plus request line, response headers"),
    (
        "idle watcher",
        ["--idle-watcher"],
        "no greenlet while idle: the handler's greenlet ends after on_connect; the socket's read watcher "
        "spawns one to run the handlers when data arrives, which ends as soon as they return",
    ),
    (
        "idle watcher, 1 s linger",
        ["--idle-watcher", "--park-after", "1"],
        "the same, but a greenlet that ran handlers waits up to 1 s for more data before it ends",
    ),
)
#: Variants whose echo and handshake rates are measured too, side by side.
RATE_VARIANTS = ("as shipped", "idle watcher", "idle watcher, 1 s linger")
#: Above this, per idle connection, the handler-state and watcher variants are worth measuring.
TRIM_THRESHOLD = 10_000


def run(plan: Plan, project: pathlib.Path, work: pathlib.Path, sources) -> dict:
    """All three measurements; a dict for the report."""
    size = plan.experiment_size
    progress(f"idle-memory experiment: asok_green variants at {size} idle connections")
    try:
        traced = _tracemalloc(plan, project, work, sources, size)
    except Exception as exc:
        traced = {"error": repr(exc)}
    result: dict = {"size": size, "tracemalloc": traced, "variants": []}
    rate_variants = RATE_VARIANTS
    for name, options, what in VARIANTS:
        shipped = result["variants"][0].get("per_conn") if result["variants"] else None
        if shipped and shipped <= TRIM_THRESHOLD:
            result["skipped"] = (
                f"asok_green as shipped already holds an idle connection in {shipped / 1000:.1f} KB: the variants "
                f"that drop handler state or park idle connections run only above {TRIM_THRESHOLD / 1000:.0f} KB"
            )
            rate_variants = ("as shipped", "timer linger, direct 101")
            progress("  " + result["skipped"])
            break
        try:
            measured = _idle_rss(plan, project, work, sources, options, size)
        except Exception as exc:  # a variant that no longer fits the package is reported, not fatal
            measured = {"open": 0, "per_conn": None, "error": repr(exc)}
        result["variants"].append({"name": name, "what": what, **measured})
        per = measured["per_conn"]
        progress(f"  {name}: {per / 1000:.1f} KB per idle connection" if per else f"  {name}: failed {measured}")
    try:
        result["rates"] = _rates(plan, project, work, sources, rate_variants)
    except Exception as exc:
        progress(f"  variant rates failed: {exc!r}")
    if load.wrk_available():
        try:
            result["nodelay_http"] = _nodelay_http(plan, project, work, sources)
        except Exception as exc:
            progress(f"  TCP_NODELAY variant failed: {exc!r}")
    return result


def _start(plan: Plan, project: pathlib.Path, work: pathlib.Path, sources, options: list[str], tag: str):
    server = start_server(PEERS_BY_NAME["asok_green"], project, work, argv_for=variant_argv(options), tag=tag)
    warm_up(server, plan, sources)
    return server


def _idle_rss(plan: Plan, project: pathlib.Path, work: pathlib.Path, sources, options: list[str], size: int) -> dict:
    server = _start(plan, project, work, sources, options, "-variant")
    holders = load.Holders(server.ws_url("/room"), server.origin, sources)
    try:
        before = procstat.rss_bytes(server.pid)
        holders.grow(size, plan.open_timeout)
        procstat.wait_idle(server.pid)
        opened = holders.still_open()
        after = procstat.rss_bytes(server.pid)
        return {"open": opened, "per_conn": (after - before) / opened if opened else None}
    finally:
        server.stop()
        holders.close()


def _rates(plan: Plan, project: pathlib.Path, work: pathlib.Path, sources, names: tuple) -> list[dict]:
    """Echo and handshake rates of the variants ``names``, in interleaved rounds like the main table's."""
    options = {name: opts for name, opts, _ in VARIANTS}
    servers = {}
    try:
        for n, name in enumerate(names):
            argv_for = variant_argv(options[name])
            servers[name] = start_server(
                PEERS_BY_NAME["asok_green"], project, work, argv_for=argv_for, tag=f"-rates{n}"
            )
        measured = interleaved(servers, plan, sources, label="  variants: ")
    finally:
        for server in servers.values():
            server.stop()
    return [
        {
            "name": name,
            "echo": got["echo"]["rate"],
            "handshakes": got["handshakes"]["rate"],
            "echo_cpu_us": got["echo"]["cpu_us"],
            "handshake_cpu_us": got["handshakes"]["cpu_us"],
        }
        for name, got in measured.items()
    ]


def _snapshot(server: ServerProcess, folder: pathlib.Path, index: int) -> tracemalloc.Snapshot | None:
    server.proc.send_signal(signal.SIGUSR1)
    path = folder / f"snapshot-{index}.pickle"
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path)) if path.exists() else None


def _tracemalloc(plan: Plan, project: pathlib.Path, work: pathlib.Path, sources, size: int) -> dict:
    folder = work / "tracemalloc"
    shutil.rmtree(folder, ignore_errors=True)
    server = _start(plan, project, work, sources, ["--tracemalloc", str(folder)], "-tracemalloc")
    holders = load.Holders(server.ws_url("/room"), server.origin, sources)
    try:
        procstat.wait_idle(server.pid)
        before = _snapshot(server, folder, 0)
        holders.grow(size, plan.open_timeout)
        procstat.wait_idle(server.pid)
        opened = holders.still_open()
        after = _snapshot(server, folder, 1)
    finally:
        server.stop()
        holders.close()
    if before is None or after is None or not opened:
        return {"error": "no snapshot"}
    diffs = [d for d in after.compare_to(before, "lineno") if d.size_diff > 0]
    traced = sum(d.size_diff for d in diffs)
    top = sorted(diffs, key=lambda d: d.size_diff, reverse=True)[:14]
    return {
        "open": opened,
        "traced_per_conn": traced / opened,
        "sites": [
            {
                "where": f"{_short(d.traceback[0].filename)}:{d.traceback[0].lineno}",
                "code": linecache.getline(d.traceback[0].filename, d.traceback[0].lineno).strip()[:72],
                "bytes_per_conn": d.size_diff / opened,
                "blocks_per_conn": d.count_diff / opened,
            }
            for d in top
        ],
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", f"{REPO}/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1].lstrip("/")
    return filename


def _nodelay_http(plan: Plan, project: pathlib.Path, work: pathlib.Path, sources) -> dict:
    """HTTP requests/s with TCP_NODELAY, without and with ``plan.http_idle`` idle WebSockets."""
    server = _start(plan, project, work, sources, ["--nodelay"], "-nodelay")
    url = server.http_url + server.peer.http_path
    holders = load.Holders(server.ws_url("/room"), server.origin, sources)
    try:
        procstat.wait_idle(server.pid)
        plain = load.wrk(url, plan.http_seconds, plan.http_connections)
        holders.grow(plan.http_idle, plan.open_timeout)
        procstat.wait_idle(server.pid)
        held = holders.still_open()
        with_idle = load.wrk(url, plan.http_seconds, plan.http_connections)
    finally:
        server.stop()
        holders.close()
    progress(
        f"  TCP_NODELAY: HTTP {plain['rate']:.0f} requests/s alone, {with_idle['rate']:.0f} with {held} idle WebSockets"
    )
    return {"plain": plain, "with_idle": with_idle, "idle": held}
