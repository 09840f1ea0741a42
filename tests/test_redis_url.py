"""The cluster's Redis URL: the Sentinel form, parsed and checked at start-up (pure, no Redis needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from asok_green.cluster.redis_url import (
    SentinelAddress,
    is_sentinel_url,
    parse_sentinel_url,
    redact,
    redis_client,
    sentinel_primary,
)
from asok_green.cluster.settings import WORKERS_ENV, ClusterConfigError, resolve_settings

pytestmark = pytest.mark.quick


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("WS_ADAPTER", "WS_REDIS_URL", "ASOK_WS_REDIS_URL", "WS_PRESENCE_TTL", WORKERS_ENV):
        monkeypatch.delenv(key, raising=False)


def test_sentinels_service_and_db():
    address = parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster/3")
    assert address == SentinelAddress(sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380)), service="mymaster", db=3)


def test_defaults_port_service_and_db():
    address = parse_sentinel_url("redis+sentinel://s1,s2:1234")
    assert address.sentinels == (("s1", 26379), ("s2", 1234))
    assert (address.service, address.db) == ("mymaster", 0)


def test_python_socketio_order_db_then_service():
    assert parse_sentinel_url("redis+sentinel://s1:26379/2/cache").service == "cache"
    assert parse_sentinel_url("redis+sentinel://s1:26379/2/cache").db == 2


def test_password_sentinel_password_tls_and_ipv6():
    address = parse_sentinel_url("rediss+sentinel://:p%40ss@[::1]:26379,h:26380/m/1?sentinel_password=sp")
    assert address.password == "p@ss" and address.username is None
    assert address.sentinel_password == "sp" and address.ssl
    assert address.sentinels == (("::1", 26379), ("h", 26380))


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///mymaster/0",
        "redis+sentinel://h:port/mymaster/0",
        "redis+sentinel://h:26379/mymaster/zero",
        "redis+sentinel://h:26379/a/b/c",
        "redis+sentinel://h:99999/m",
    ],
)
def test_malformed_urls_are_refused_saying_why(url):
    with pytest.raises(ClusterConfigError, match="WS_REDIS_URL"):
        parse_sentinel_url(url)


def test_passwords_are_hidden_in_what_is_logged():
    url = "redis+sentinel://user:secret@h:26379/m/0?sentinel_password=other"
    shown = redact(url)
    assert "secret" not in shown and "other" not in shown and "h:26379/m/0" in shown
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def hub(**config):
    return SimpleNamespace(adapter=None, app=SimpleNamespace(config=config))


def test_settings_take_a_sentinel_url_and_refuse_a_malformed_one():
    url = "redis+sentinel://h1:26379,h2:26379/mymaster/0"
    assert resolve_settings(hub(WS_ADAPTER="redis", WS_REDIS_URL=url)).url == url
    assert is_sentinel_url(url) and not is_sentinel_url("redis://h:6379/0")
    with pytest.raises(ClusterConfigError, match="names no sentinel"):
        resolve_settings(hub(WS_ADAPTER="redis", WS_REDIS_URL="redis+sentinel:///mymaster"))


def test_an_adapter_argument_may_be_a_sentinel_url():
    url = "redis+sentinel://h1:26379/mymaster"
    settings = resolve_settings(SimpleNamespace(adapter=url, app=SimpleNamespace(config={})))
    assert settings is not None and settings.url == url


def test_the_client_asks_the_sentinels_for_the_service_with_the_url_credentials():
    client = redis_client("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/cache/4?sentinel_password=sp", socket_timeout=1)
    pool = client.connection_pool
    assert pool.service_name == "cache"
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    assert all(s.connection_pool.connection_kwargs["password"] == "sp" for s in sentinels)
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 1 for s in sentinels)


class StubSentinel:
    """A sentinel's answer to SENTINEL MASTERS, as redis-py parses it."""

    def __init__(self, port: int, epoch: int, flags: str = "master"):
        self.state = {
            "ip": "127.0.0.1",
            "port": port,
            "config-epoch": epoch,
            "is_master": True,
            "is_sdown": "s_down" in flags,
            "is_odown": False,
            "num-other-sentinels": 2,
        }

    def sentinel_masters(self):
        return {"mymaster": self.state}


def test_the_primary_of_the_newest_configuration_wins_over_a_sentinel_that_lags():
    client = redis_client("redis+sentinel://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/mymaster")
    manager = client.connection_pool.sentinel_manager
    manager.sentinels = [StubSentinel(6379, 1), StubSentinel(6380, 2), StubSentinel(6379, 1)]
    assert manager.discover_master("mymaster") == ("127.0.0.1", 6380)
    manager.sentinels = [StubSentinel(6379, 1, "s_down")]
    with pytest.raises(RedisConnectionError, match="No master found"):
        manager.discover_master("mymaster")


def test_no_sentinel_answering_names_no_new_primary_but_sentinels_saying_down_do():
    client = redis_client("redis+sentinel://127.0.0.1:1/mymaster", socket_connect_timeout=0.5)
    assert sentinel_primary(client) is None  # nothing listens on port 1
    client.connection_pool.sentinel_manager.sentinels = [StubSentinel(6380, 3)]
    assert sentinel_primary(client) == ("127.0.0.1", 6380)
    client.connection_pool.sentinel_manager.sentinels = [StubSentinel(6380, 3, "s_down")]
    with pytest.raises(RedisConnectionError):
        sentinel_primary(client)
    assert sentinel_primary(redis_client("redis://127.0.0.1:1/0")) is None
