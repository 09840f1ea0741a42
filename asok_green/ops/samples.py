"""The figures of the WebSocket server as samples: read from the hubs when asked, summed over processes.

The hot paths keep only what they already kept (the hub's ``stats`` Counter,
its state, ``hub.handler_times``) plus the fan-out and publish timings of
``hub.metrics`` while metrics are on. :func:`gather` reads them into samples,
``(family, suffix, labels, value)``: labels are route patterns and causes only,
never paths, rooms or users. With several processes (``--workers N``, or
gunicorn with ``ASOK_GREEN_METRICS_DIR`` set) each process writes its samples to
that directory every second and the process that is asked sums them.

Exposition (the Prometheus text format, Asok's metrics path) is
asok_green.ops.metrics's job.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core.refusals import handshake_refusals
from ..core.timing import Timing

logger = logging.getLogger("asok_green")

#: The directory where each process of a multi-process server writes its figures.
METRICS_DIR_ENV = "ASOK_GREEN_METRICS_DIR"

#: Seconds between two writes of a process' figures to the metrics directory.
SNAPSHOT_INTERVAL = 1.0

# -- gathering (pure reads of the hubs) ---------------------------------------------

#: name -> (type, help, how several processes combine: "sum" or "max").
FAMILIES: dict[str, tuple[str, str, str]] = {
    "asok_green_connections": ("gauge", "Open WebSocket connections, by route pattern.", "sum"),
    "asok_green_connections_opened": ("counter", "WebSocket connections opened.", "sum"),
    "asok_green_handshakes_refused": ("counter", "WebSocket handshakes refused, by cause.", "sum"),
    "asok_green_messages_received": ("counter", "Messages handled, by route pattern.", "sum"),
    "asok_green_messages_sent": ("counter", "Messages handed to connections (broadcast deliveries and sends).", "sum"),
    "asok_green_received_bytes": ("counter", "Bytes read from WebSocket clients.", "sum"),
    "asok_green_sent_bytes": ("counter", "Bytes of messages handed to connections.", "sum"),
    "asok_green_handler_seconds": ("histogram", "Time in message handlers, by route pattern.", "sum"),
    "asok_green_broadcast_fanout_seconds": ("histogram", "Time to hand one broadcast to its recipients.", "sum"),
    "asok_green_slow_consumers_closed": ("counter", "Connections closed 1008 for a send queue over its limit.", "sum"),
    "asok_green_rate_limit_closed": ("counter", "Connections closed 1008 for a message rate over its limit.", "sum"),
    "asok_green_protocol_errors": ("counter", "Connections closed for breaking the protocol.", "sum"),
    "asok_green_queued_bytes": ("gauge", "Bytes waiting in outbound queues.", "sum"),
    "asok_green_queued_connections": ("gauge", "Connections with something in their outbound queue.", "sum"),
    "asok_green_rooms": ("gauge", "Rooms with at least one member in this process.", "sum"),
    "asok_green_users_online": ("gauge", "Users with at least one open connection (cluster-wide).", "max"),
    "asok_green_redis_connected": ("gauge", "1 while the Redis link is up, by process.", "sum"),
    "asok_green_redis_nodes": ("gauge", "Processes of the cluster this one sees live (itself included).", "max"),
    "asok_green_cluster_published": ("counter", "Broadcasts published to Redis.", "sum"),
    "asok_green_cluster_received": ("counter", "Broadcasts received from Redis.", "sum"),
    "asok_green_cluster_dropped": ("counter", "Broadcasts not published (Redis down or backlog full).", "sum"),
    "asok_green_cluster_backlog": ("gauge", "Broadcasts waiting to be published to Redis.", "sum"),
    "asok_green_redis_publish_seconds": ("histogram", "Time of one batch of publishes to Redis.", "sum"),
    "asok_green_processes": ("gauge", "Server processes whose figures this response includes.", "sum"),
}

#: A sample: (family, sample suffix, labels, value).
Sample = tuple[str, str, dict[str, str], float]


def _route_pattern(hub: Any, path: str) -> str:
    route = hub.match(path)[0]
    return route.pattern if route is not None else "(none)"


#: Each hub state's held paths -> their route patterns, as of the last pass (only paths held then).
_PATTERNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def connections_by_route(hub: Any) -> Counter:
    """How many connections each route pattern holds; a path is matched once while it is held, not at every pass.

    With a path of its own per client, matching every path against the routes
    at every pass (once a second with several workers) cost tens of ms at
    20,000 connections; now a pass looks each path up in a table of the paths
    held at the last one.
    """
    state = hub.state
    known = _PATTERNS.get(state, {})
    patterns: dict[str, str] = {}
    by_route: Counter = Counter()
    for path, members in state.by_path.items():
        pattern = known.get(path)
        if pattern is None:
            pattern = _route_pattern(hub, path)
        patterns[path] = pattern
        by_route[pattern] += len(members)
    _PATTERNS[state] = patterns
    return by_route


def _handler_routes(hub: Any) -> dict[Callable, str]:
    """Handler function -> the route pattern(s) it serves (comma-joined when shared)."""
    names: dict[Callable, list[str]] = {}
    for route in hub.routes:
        if route.on_message is not None:
            names.setdefault(route.on_message, []).append(route.pattern)
    return {fn: ",".join(patterns) for fn, patterns in names.items()}


def _timing_samples(family: str, timing: Timing, labels: dict[str, str]) -> Iterator[Sample]:
    for le, count in timing.cumulative():
        yield family, "_bucket", {**labels, "le": le}, count
    yield family, "_count", labels, timing.count
    yield family, "_sum", labels, timing.total


def hub_samples(hub: Any) -> Iterator[Sample]:
    """Every sample one hub contributes, read from its state, stats and timings."""
    state, stats = hub.state, hub.stats
    by_route = connections_by_route(hub)
    for route in hub.routes:
        by_route.setdefault(route.pattern, 0)
    for pattern, count in by_route.items():
        yield "asok_green_connections", "", {"route": pattern}, count
    yield "asok_green_connections_opened", "_total", {}, stats["connections_opened"]
    yield "asok_green_messages_sent", "_total", {}, stats["messages_sent"]
    yield "asok_green_sent_bytes", "_total", {}, stats["bytes_sent"]
    yield "asok_green_received_bytes", "_total", {}, stats["bytes_received"]
    yield "asok_green_slow_consumers_closed", "_total", {}, stats["slow_consumers_closed"]
    yield "asok_green_rate_limit_closed", "_total", {}, stats["rate_limited"]
    yield "asok_green_protocol_errors", "_total", {}, stats["protocol_errors"]
    queued = busy = 0
    for members in state.by_path.values():
        for conn in members:
            pending = conn.pending_bytes
            if pending:
                queued += pending
                busy += 1
    yield "asok_green_queued_bytes", "", {}, queued
    yield "asok_green_queued_connections", "", {}, busy
    yield "asok_green_rooms", "", {}, len(state.rooms)
    yield "asok_green_users_online", "", {}, state.online_count()
    cluster = hub.cluster
    if cluster is not None:
        yield "asok_green_redis_connected", "", {}, 1 if cluster.connected else 0
        yield "asok_green_redis_nodes", "", {}, len(state.live_nodes()) + 1
        yield "asok_green_cluster_backlog", "", {}, getattr(cluster, "backlog", 0)
        for name in ("published", "received", "dropped"):
            yield f"asok_green_cluster_{name}", "_total", {}, stats[f"cluster_{name}"]
    metrics = hub.metrics
    if metrics is None:
        return
    # The one count of handler time (hub.handler_times), message handlers only.
    times = hub.handler_times
    for handler, pattern in _handler_routes(hub).items():
        timing = times.get(handler)
        if timing is not None:
            labels = {"route": pattern}
            yield "asok_green_messages_received", "_total", labels, timing.count
            yield from _timing_samples("asok_green_handler_seconds", timing, labels)
    yield from _timing_samples("asok_green_broadcast_fanout_seconds", metrics.fanout_time, {})
    if cluster is not None:
        yield from _timing_samples("asok_green_redis_publish_seconds", metrics.publish_time, {})


def process_samples(hubs: Iterable[Any]) -> list[Sample]:
    """The samples of this process: every hub's, plus the handshakes refused here."""
    samples = [sample for hub in hubs for sample in hub_samples(hub)]
    for cause in ("origin", "limit", "auth", "route", "path", "headers", "protocol"):
        samples.append(("asok_green_handshakes_refused", "_total", {"cause": cause}, handshake_refusals[cause]))
    samples.append(("asok_green_processes", "", {}, 1))
    return samples


def combine(processes: Iterable[list[Sample]]) -> list[Sample]:
    """One list of samples for several processes (or hubs): summed, or the max for cluster-wide gauges."""
    merged: dict[tuple, float] = {}
    order: list[tuple] = []
    for samples in processes:
        for family, suffix, labels, value in samples:
            key = (family, suffix, tuple(sorted(labels.items())))
            if key not in merged:
                merged[key] = value
                order.append(key)
            elif FAMILIES[family][2] == "max":
                merged[key] = max(merged[key], value)
            else:
                merged[key] += value
    return [(family, suffix, dict(labels), merged[(family, suffix, labels)]) for family, suffix, labels in order]


def snapshot(hubs: Iterable[Any] | None = None) -> dict[str, Any]:
    """This process' figures as plain data: ``{family: [(suffix, labels, value), ...]}``.

    For readers inside the process (a dashboard) that want the numbers without
    the exposition format; with ``ASOK_GREEN_METRICS_DIR`` set, every
    process' figures summed.
    """
    samples = gather(hubs)
    out: dict[str, list] = {}
    for family, suffix, labels, value in samples:
        out.setdefault(family, []).append((suffix, labels, value))
    return out


def _hubs(hubs: Iterable[Any] | None) -> list[Any]:
    if hubs is not None:
        return list(hubs)
    from ..server.hub import Hub

    return Hub.instances()


# -- several processes: one file each in a shared directory ---------------------------


def _snapshot_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{pid}.json")


def write_process_file(directory: str, samples: list[Sample]) -> None:
    """Write this process' samples where its siblings read them (atomically)."""
    path = _snapshot_path(directory, os.getpid())
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(samples, fh)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_sibling_files(directory: str) -> list[list[Sample]]:
    """The samples every other live process wrote; files of processes that are gone are removed."""
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        stem, dot, ext = name.partition(".")
        if ext != "json" or not stem.isdigit() or int(stem) == os.getpid():
            continue
        path = os.path.join(directory, name)
        if not _alive(int(stem)):
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        try:
            with open(path) as fh:
                out.append([tuple(sample) for sample in json.load(fh)])
        except (OSError, ValueError):
            continue
    return out


def gather(hubs: Iterable[Any] | None = None) -> list[Sample]:
    """The samples to expose: this process', plus its siblings' when a metrics directory is set."""
    own = process_samples(_hubs(hubs))
    directory = os.environ.get(METRICS_DIR_ENV)
    if not directory:
        return combine([own])
    write_process_file(directory, own)
    return combine([own, *read_sibling_files(directory)])


def keep_process_file(directory: str, hubs: list[Any]) -> None:
    """Write this process' samples to ``directory`` every :data:`SNAPSHOT_INTERVAL` seconds, for good."""
    import gevent

    while True:
        try:
            write_process_file(directory, process_samples(hubs))
        except Exception:
            logger.exception("writing metrics to %s failed", directory)
        gevent.sleep(SNAPSHOT_INTERVAL)
