"""Prometheus metrics of the WebSocket server, gathered when they are scraped.

The hot paths keep only what they already kept (the hub's ``stats`` Counter,
its state) plus two cheap timings: each handler call and each broadcast's
fan-out, counted into fixed buckets (:class:`Timing`). Everything else is read
from the hub when Prometheus asks, by :class:`GreenCollector`, a
``prometheus_client`` collector. Labels are route patterns and causes only,
never paths, rooms or users.

The families are served where Asok users already scrape: Asok's own
``METRICS_PATH`` response (``METRICS_ENABLED``, ``METRICS_TOKEN``), which
:func:`wrap_app` extends with them and whose ``asok_websocket_active_connections``
it sets from the hub. With several processes (``--workers N``, or gunicorn with
``ASOK_GREEN_METRICS_DIR`` set) each process writes its figures to that
directory every second and the process that answers a scrape sums them.

``prometheus_client`` is the ``metrics`` extra: without it the server serves
Asok's response unchanged and says once that its own metrics are off.
"""

from __future__ import annotations

import json
import logging
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core.refusals import handshake_refusals
from ..core.refusals import refusal_label as refusal_cause

logger = logging.getLogger("asok_green")

__all__ = [
    "FAMILIES",
    "GreenCollector",
    "HubMetrics",
    "METRICS_DIR_ENV",
    "Timing",
    "available",
    "gather",
    "handshake_refusals",
    "overview",
    "refusal_cause",
    "snapshot",
    "wrap_app",
]

#: The directory where each process of a multi-process server writes its figures.
METRICS_DIR_ENV = "ASOK_GREEN_METRICS_DIR"

#: Seconds between two writes of a process' figures to the metrics directory.
SNAPSHOT_INTERVAL = 1.0

#: Upper bounds (seconds) of the handler-time and fan-out-time buckets.
TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def available() -> bool:
    """True when ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class Timing:
    """Durations counted into fixed buckets, as a Prometheus histogram holds them."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        """No observation yet; ``bounds`` are the buckets' upper bounds, ascending."""
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        """How many durations were counted."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class HubMetrics:
    """What one hub times on its hot paths while metrics are on (``hub.metrics``)."""

    __slots__ = ("handler_time", "fanout_time", "publish_time")

    def __init__(self) -> None:
        """Empty timings."""
        #: message handler function -> its call durations.
        self.handler_time: dict[Callable, Timing] = {}
        #: Durations of handing one broadcast to every recipient in this process.
        self.fanout_time = Timing()
        #: Durations of one batch of cluster publishes to Redis (the publish lag).
        self.publish_time = Timing()

    def handled(self, handler: Callable, seconds: float) -> None:
        """Count one message handler call that took ``seconds``."""
        timing = self.handler_time.get(handler)
        if timing is None:
            timing = self.handler_time[handler] = Timing()
        timing.observe(seconds)


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
    by_route: Counter = Counter()
    for path, members in state.by_path.items():
        by_route[_route_pattern(hub, path)] += len(members)
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
            pending = conn._pending_bytes
            if pending:
                queued += pending
                busy += 1
    yield "asok_green_queued_bytes", "", {}, queued
    yield "asok_green_queued_connections", "", {}, busy
    yield "asok_green_rooms", "", {}, len(state.rooms)
    yield "asok_green_users_online", "", {}, len(state.online_users())
    cluster = hub.cluster
    if cluster is not None:
        yield "asok_green_redis_connected", "", {}, 1 if cluster.connected else 0
        yield "asok_green_redis_nodes", "", {}, len(state.live_nodes()) + 1
        yield "asok_green_cluster_backlog", "", {}, len(getattr(cluster, "_outbox", ()))
        for name in ("published", "received", "dropped"):
            yield f"asok_green_cluster_{name}", "_total", {}, stats[f"cluster_{name}"]
    metrics = hub.metrics
    if metrics is None:
        return
    routes = _handler_routes(hub)
    for handler, timing in list(metrics.handler_time.items()):
        labels = {"route": routes.get(handler, "(none)")}
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
    from ..server.hub import WebSocketServer

    return WebSocketServer.instances()


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


def _keep_process_file(directory: str, hubs: list[Any]) -> None:
    import gevent

    while True:
        try:
            write_process_file(directory, process_samples(hubs))
        except Exception:
            logger.exception("writing metrics to %s failed", directory)
        gevent.sleep(SNAPSHOT_INTERVAL)


# -- exposition ----------------------------------------------------------------------


class GreenCollector:
    """A ``prometheus_client`` collector yielding asok_green's families at scrape time."""

    def __init__(self, hubs: Iterable[Any] | None = None, samples: list[Sample] | None = None) -> None:
        """Collect from ``hubs`` (default: every WebSocketServer of the process), or expose ``samples`` as given."""
        self._hubs = list(hubs) if hubs is not None else None
        self._samples = samples

    def collect(self) -> Iterator[Any]:
        """The metric families, built from :func:`gather`."""
        from prometheus_client.core import Metric

        families: dict[str, Any] = {}
        samples = self._samples if self._samples is not None else gather(self._hubs)
        for family, suffix, labels, value in samples:
            metric = families.get(family)
            if metric is None:
                kind, doc, _ = FAMILIES[family]
                metric = families[family] = Metric(family, doc, kind)
            metric.add_sample(family + suffix, labels, value)
        yield from families.values()

    def describe(self) -> list:
        """Nothing to check in advance: the families are built at each scrape."""
        return []


def exposition(samples: list[Sample]) -> bytes:
    """``samples`` (from :func:`gather`) in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GreenCollector(samples=samples))
    return generate_latest(registry)


def _total(samples: list[Sample], family: str, suffix: str = "") -> float:
    return sum(value for name, end, _, value in samples if name == family and end == suffix)


def _by_label(samples: list[Sample], family: str, label: str, suffix: str = "") -> dict[str, float]:
    return {labels[label]: value for name, end, labels, value in samples if name == family and end == suffix}


def overview(hubs: Iterable[Any] | None = None) -> dict[str, Any]:
    """The figures an operator watches, as one flat dict (every process' with a metrics directory).

    Keys: ``connections``, ``connections_by_route``, ``connections_opened``,
    ``messages_received``, ``messages_received_by_route``, ``messages_sent``,
    ``bytes_received``, ``bytes_sent``, ``handler_seconds_by_route``
    (``{route: [count, total seconds]}``), ``fanouts``, ``fanout_seconds``,
    ``slow_consumers_closed``, ``rate_limit_closed``, ``protocol_errors``,
    ``handshakes_refused`` (``{cause: count}``), ``queued_bytes``,
    ``queued_connections``, ``rooms``, ``users_online``, ``redis_connected``
    (None outside a cluster), ``processes``. Counters only grow: a rate is the
    difference of two readings over the time between them. Timings (handler,
    fan-out) stay empty while metrics are off; everything else is always kept.
    """
    samples = gather(hubs)
    handler_count = _by_label(samples, "asok_green_handler_seconds", "route", "_count")
    handler_sum = _by_label(samples, "asok_green_handler_seconds", "route", "_sum")
    redis = [v for name, _, _, v in samples if name == "asok_green_redis_connected"]
    return {
        "connections": _total(samples, "asok_green_connections"),
        "connections_by_route": _by_label(samples, "asok_green_connections", "route"),
        "connections_opened": _total(samples, "asok_green_connections_opened", "_total"),
        "messages_received": _total(samples, "asok_green_messages_received", "_total"),
        "messages_received_by_route": _by_label(samples, "asok_green_messages_received", "route", "_total"),
        "messages_sent": _total(samples, "asok_green_messages_sent", "_total"),
        "bytes_received": _total(samples, "asok_green_received_bytes", "_total"),
        "bytes_sent": _total(samples, "asok_green_sent_bytes", "_total"),
        "handler_seconds_by_route": {r: [n, handler_sum.get(r, 0.0)] for r, n in handler_count.items()},
        "fanouts": _total(samples, "asok_green_broadcast_fanout_seconds", "_count"),
        "fanout_seconds": _total(samples, "asok_green_broadcast_fanout_seconds", "_sum"),
        "slow_consumers_closed": _total(samples, "asok_green_slow_consumers_closed", "_total"),
        "rate_limit_closed": _total(samples, "asok_green_rate_limit_closed", "_total"),
        "protocol_errors": _total(samples, "asok_green_protocol_errors", "_total"),
        "handshakes_refused": _by_label(samples, "asok_green_handshakes_refused", "cause", "_total"),
        "queued_bytes": _total(samples, "asok_green_queued_bytes"),
        "queued_connections": _total(samples, "asok_green_queued_connections"),
        "rooms": _total(samples, "asok_green_rooms"),
        "users_online": _total(samples, "asok_green_users_online"),
        "redis_connected": sum(redis) if redis else None,
        "processes": _total(samples, "asok_green_processes"),
    }


def _metrics_path(app: Any) -> str | None:
    config = getattr(app, "config", None)
    if not hasattr(config, "get") or not hasattr(app, "_session_store"):
        return None
    return config.get("METRICS_PATH", "/metrics")


def _metrics_enabled(app: Any) -> bool:
    config = getattr(app, "config", None) or {}
    value = config.get("METRICS_ENABLED", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def wrap_app(app: Any, hubs: Iterable[Any]) -> Any:
    """``app``, with asok_green's families added to Asok's ``METRICS_PATH`` response.

    Every other request goes to ``app`` untouched. Asok answers the path itself
    (its ``METRICS_ENABLED`` and ``METRICS_TOKEN``); a 200 gets the families
    appended, and ``asok_websocket_active_connections`` counts the hub's
    sockets. ``METRICS_TOKEN`` (or ``ASOK_METRICS_TOKEN``) in the environment
    sets the app's token when its config has none. Turns on the hubs' timings.
    Returns ``app`` itself when Asok serves no metrics (not an Asok app, or
    ``METRICS_ENABLED`` false). Without ``prometheus_client`` asok_green's
    families are off (one log line says so) and Asok's gauge is still set.
    """
    hubs = list(hubs)
    path = _metrics_path(app)
    if path is None or not _metrics_enabled(app):
        return app
    token = os.environ.get("ASOK_METRICS_TOKEN") or os.environ.get("METRICS_TOKEN")
    if token and not app.config.get("METRICS_TOKEN"):
        # Asok reads its other METRICS_* settings from the environment too.
        app.config["METRICS_TOKEN"] = token
    families = available()
    if not families:
        logger.info(
            "metrics: prometheus_client is not installed (pip install 'asok_green[metrics]'): "
            "asok_green's metrics are off",
            extra={"event": "metrics_off"},
        )
    for hub in hubs:
        if families and hub.metrics is None:
            hub.metrics = HubMetrics()
    directory = os.environ.get(METRICS_DIR_ENV)
    if directory:
        import gevent

        gevent.spawn(_keep_process_file, directory, hubs)
    return MetricsApp(app, hubs, path, families)


class MetricsApp:
    """A WSGI app that extends Asok's metrics response and passes every other request through."""

    def __init__(self, app: Any, hubs: list[Any], path: str, families: bool = True) -> None:
        """Wrap ``app``; ``path`` is Asok's ``METRICS_PATH``; ``families``: append asok_green's."""
        self.app = app
        self.hubs = hubs
        self.path = path
        self.families = families

    def __getattr__(self, name: str) -> Any:
        # The serving process reads the app's config (WS_PORT) and more through the wrapper.
        return getattr(self.app, name)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """Serve one request."""
        if environ.get("PATH_INFO") != self.path:
            return self.app(environ, start_response)
        samples = gather(self.hubs)
        try:
            from asok.core.metrics import default_metrics

            default_metrics.set_ws_connections(int(_total(samples, "asok_green_connections")))
        except ImportError:
            pass
        captured: list = []

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured[:] = [status, headers]
            return lambda data: None

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = captured or ("500 Internal Server Error", [])
        if (
            self.families
            and status.startswith("200")
            and any(k.lower() == "content-type" and v.startswith("text/plain") for k, v in headers)
        ):
            body += exposition(samples)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]
