"""The cluster's settings: whether a hub joins a Redis cluster, on which Redis, with what prefix and TTL.

Pure decisions on the hub's ``adapter=`` argument, its app's config and the
environment, as Asok resolves them (``WS_ADAPTER``, ``WS_REDIS_URL``,
``WS_PRESENCE_TTL``); ``--workers N`` requires Redis. ``WS_REDIS_URL`` is a
``redis://`` (``rediss://``, ``unix://``) URL, or a primary watched by Sentinel
(``redis+sentinel://host:26379,host:26380/mymaster/0``, asok_green.cluster.redis_url),
checked here. Nothing connects here:
asok_green.cluster.redis_node does, with what :func:`resolve_settings` answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..core.node import ClusterConfigError
from .redis_url import is_sentinel_url, parse_sentinel_url

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "asok:ws"
DEFAULT_PRESENCE_TTL = 30.0
#: Set by ``--workers N`` in each worker's environment.
WORKERS_ENV = "ASOK_GREEN_WORKERS"

_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")


@dataclass(frozen=True)
class ClusterSettings:
    """Where the cluster's Redis is, the key and channel prefix, and the presence heartbeat TTL."""

    url: str
    prefix: str = DEFAULT_PREFIX
    presence_ttl: float = DEFAULT_PRESENCE_TTL


def worker_count() -> int:
    """How many processes ``--workers`` started on this port (1 when not started by it)."""
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1


def _setting(config: Any, key: str) -> Any:
    value = config.get(key) if hasattr(config, "get") else None
    if value is None or value == "":
        value = os.environ.get(key)
    return value or None


def resolve_settings(hub: Any) -> ClusterSettings | None:
    """The cluster settings of ``hub``, or None for a single process.

    In order: the ``adapter=`` constructor argument (``"redis"``, a ``redis://``
    URL, or an Asok ``RedisWebSocketAdapter``), then ``WS_ADAPTER`` and
    ``WS_REDIS_URL`` from the app's config, then from the environment, as Asok
    resolves them. Under ``--workers N`` (N > 1) Redis is required and its URL
    must be given explicitly: :class:`ClusterConfigError` otherwise. Any other
    Asok adapter object gives None, even under ``--workers``: the hub drives it
    (asok_green.cluster.adapters); an object that is no adapter is a
    :class:`ClusterConfigError`.
    """
    config = getattr(hub.app, "config", None) or {}
    adapter = hub.adapter
    url = None
    prefix = DEFAULT_PREFIX
    if isinstance(adapter, str):
        kind = "redis" if adapter.startswith(_URL_SCHEMES) else adapter.lower()
        url = adapter if adapter.startswith(_URL_SCHEMES) else None
    elif adapter is not None:
        url = getattr(adapter, "redis_url", None)
        prefix = getattr(adapter, "channel_prefix", None) or DEFAULT_PREFIX
        if not url:
            from .adapters import AdapterRefused, is_custom_adapter

            try:
                if is_custom_adapter(adapter):
                    return None  # it carries the broadcasts itself (asok_green.cluster.adapters)
            except AdapterRefused as exc:
                raise ClusterConfigError(str(exc)) from None
        kind = "redis" if url else "memory"
    else:
        kind = str(_setting(config, "WS_ADAPTER") or "memory").lower()
    workers = worker_count()
    if workers > 1:
        kind = "redis"
    if kind != "redis":
        return None
    url = url or _setting(config, "WS_REDIS_URL")
    # Asok's config holds a default URL; several workers need one that someone chose.
    chosen = url not in (None, DEFAULT_REDIS_URL) or any(
        os.environ.get(k) for k in ("WS_REDIS_URL", "ASOK_WS_REDIS_URL")
    )
    if not chosen:
        if workers > 1:
            raise ClusterConfigError(
                f"--workers {workers} needs Redis so that the workers act as one server "
                "(broadcasts and presence across processes): set WS_REDIS_URL, e.g. "
                "WS_REDIS_URL=redis://127.0.0.1:6379/0 in the environment or .env, "
                'or app.config["WS_REDIS_URL"]'
            )
        url = url or DEFAULT_REDIS_URL
    raw_ttl = _setting(config, "WS_PRESENCE_TTL")
    try:
        ttl = float(raw_ttl) if raw_ttl is not None else DEFAULT_PRESENCE_TTL
    except (TypeError, ValueError):
        raise ClusterConfigError(f"WS_PRESENCE_TTL must be a number of seconds, not {raw_ttl!r}") from None
    if ttl <= 0:
        raise ClusterConfigError(f"WS_PRESENCE_TTL must be positive, not {raw_ttl!r}")
    url = str(url)
    if is_sentinel_url(url):
        parse_sentinel_url(url)  # a malformed one is refused at start-up, saying why
    return ClusterSettings(url=url, prefix=prefix, presence_ttl=ttl)
