"""Prometheus metrics of the WebSocket server, exposed where Asok users already scrape.

The figures are gathered when they are scraped (asok_green.ops.samples);
this module holds what exposes them: :class:`GreenCollector`, a
``prometheus_client`` collector; :func:`exposition`, the text format; and
:func:`wrap_app`, which extends Asok's own ``METRICS_PATH`` response
(``METRICS_ENABLED``, ``METRICS_TOKEN``) with asok_green's families and sets its
``asok_websocket_active_connections`` from the hub. :func:`overview` gives the
same figures as one flat dict, for readers inside the process.

While metrics are on, a hub keeps two more timings (:class:`HubMetrics`): each
broadcast's fan-out and each batch of cluster publishes. Handler time is always
counted, once, in ``hub.handler_times`` (asok_green.core.timing). Asok's gauge is
set through the framework's answers (asok_green.core.framework): ops knows no Asok.

``prometheus_client`` is the ``metrics`` extra: without it the server serves
Asok's response unchanged and says once that its own metrics are off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core import framework
from ..core.refusals import handshake_refusals
from ..core.refusals import refusal_label as refusal_cause
from ..core.timing import TIME_BUCKETS, Timing
from .samples import (
    FAMILIES,
    METRICS_DIR_ENV,
    Sample,
    combine,
    gather,
    keep_process_file,
    read_sibling_files,
    snapshot,
    write_process_file,
)

logger = logging.getLogger("asok_green")

__all__ = [
    "FAMILIES",
    "GreenCollector",
    "HubMetrics",
    "METRICS_DIR_ENV",
    "TIME_BUCKETS",
    "Timing",
    "available",
    "combine",
    "gather",
    "handshake_refusals",
    "overview",
    "read_sibling_files",
    "refusal_cause",
    "snapshot",
    "wrap_app",
    "write_process_file",
]


def available() -> bool:
    """True when ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class HubMetrics:
    """What one hub times on its hot paths while metrics are on (``hub.metrics``)."""

    __slots__ = ("fanout_time", "publish_time")

    def __init__(self) -> None:
        """Empty timings."""
        #: Durations of handing one broadcast to every recipient in this process.
        self.fanout_time = Timing()
        #: Durations of one batch of cluster publishes to Redis (the publish lag).
        self.publish_time = Timing()


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
    if not hasattr(config, "get") or not framework.current().owns(app):
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

        gevent.spawn(keep_process_file, directory, hubs)
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
        framework.current().count_open_sockets(int(_total(samples, "asok_green_connections")))
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
