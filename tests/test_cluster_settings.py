"""Which hubs join a Redis cluster, and with what settings (pure decisions, no Redis needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from asok_green.cluster.settings import (
    DEFAULT_REDIS_URL,
    WORKERS_ENV,
    ClusterConfigError,
    ClusterSettings,
    resolve_settings,
)

pytestmark = pytest.mark.quick

URL = "redis://10.0.0.5:6379/2"


def hub(adapter=None, **config):
    """What resolve_settings reads of a WebSocketServer: its adapter argument and its app's config."""
    return SimpleNamespace(adapter=adapter, app=SimpleNamespace(config=config))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("WS_ADAPTER", "WS_REDIS_URL", "ASOK_WS_REDIS_URL", "WS_PRESENCE_TTL", WORKERS_ENV):
        monkeypatch.delenv(key, raising=False)


def test_no_adapter_means_one_process():
    assert resolve_settings(hub()) is None
    assert resolve_settings(hub(WS_ADAPTER="memory", WS_REDIS_URL=URL)) is None


def test_ws_adapter_redis_in_app_config():
    assert resolve_settings(hub(WS_ADAPTER="redis", WS_REDIS_URL=URL)) == ClusterSettings(URL)


def test_environment_when_the_config_says_nothing(monkeypatch):
    monkeypatch.setenv("WS_ADAPTER", "redis")
    monkeypatch.setenv("WS_REDIS_URL", URL)
    monkeypatch.setenv("WS_PRESENCE_TTL", "2.5")
    assert resolve_settings(hub()) == ClusterSettings(URL, presence_ttl=2.5)


def test_redis_without_a_url_uses_asoks_default():
    assert resolve_settings(hub(WS_ADAPTER="redis")).url == DEFAULT_REDIS_URL


def test_adapter_argument_url_or_asok_adapter():
    assert resolve_settings(hub(adapter=URL)).url == URL
    assert resolve_settings(hub(adapter="redis", WS_REDIS_URL=URL)).url == URL
    asok_adapter = SimpleNamespace(redis_url=URL, channel_prefix="myapp:ws")
    assert resolve_settings(hub(adapter=asok_adapter)) == ClusterSettings(URL, prefix="myapp:ws")
    # Any other object is refused (an Asok adapter of one's own is driven: tests/test_adapters.py).
    with pytest.raises(ClusterConfigError, match="not a WebSocket adapter"):
        resolve_settings(hub(adapter=SimpleNamespace(), WS_ADAPTER="redis"))


def test_workers_require_a_chosen_url(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "2")
    with pytest.raises(ClusterConfigError, match="--workers 2 needs Redis"):
        resolve_settings(hub())
    # Asok's config always holds its default URL: that is not a choice.
    with pytest.raises(ClusterConfigError):
        resolve_settings(hub(WS_ADAPTER="memory", WS_REDIS_URL=DEFAULT_REDIS_URL))
    assert resolve_settings(hub(WS_ADAPTER="memory", WS_REDIS_URL=URL)).url == URL
    monkeypatch.setenv("WS_REDIS_URL", DEFAULT_REDIS_URL)
    assert resolve_settings(hub(WS_REDIS_URL=DEFAULT_REDIS_URL)).url == DEFAULT_REDIS_URL


@pytest.mark.parametrize("ttl", ["0", "-1", "soon"])
def test_bad_presence_ttl_is_refused(ttl):
    with pytest.raises(ClusterConfigError, match="WS_PRESENCE_TTL"):
        resolve_settings(hub(WS_ADAPTER="redis", WS_PRESENCE_TTL=ttl))
