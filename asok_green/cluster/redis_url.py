"""The cluster's Redis address: a plain ``redis://`` URL, or the Sentinel form, and the client for it.

A primary watched by Redis Sentinel is named by its sentinels and its service
name, in the URL form other Python libraries accept (redis-sentinel-url,
python-socketio)::

    redis+sentinel://[[user]:password@]host:26379,host:26380[,...]/mymaster[/db][?sentinel_password=...]
    rediss+sentinel://...   (TLS to the sentinels and to Redis)

python-socketio's order, ``/db/service``, is accepted too (a path whose first
part is a number). The password in the URL is the Redis servers'; a sentinel
that wants its own gets ``sentinel_password`` (``sentinel_username``).

:func:`parse_sentinel_url` is pure; :func:`redis_client` builds redis-py's
client. Under Sentinel it is ``Sentinel(...).master_for(service)``: each new
connection asks the sentinels where the primary is (all of them: the newest
configuration wins, a sentinel may lag a failover), and a connection that
finds a primary demoted to a replica (``READONLY``) is dropped, so the next
one finds the new primary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..core.node import ClusterConfigError

#: URL schemes that name a primary through its sentinels (the second with TLS).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: The port of a sentinel when the URL gives none.
DEFAULT_SENTINEL_PORT = 26379
#: The service name when the URL gives none (Sentinel's own example).
DEFAULT_SERVICE = "mymaster"


@dataclass(frozen=True)
class SentinelAddress:
    """A primary as Sentinel knows it: where the sentinels are, the service, the database and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    service: str = DEFAULT_SERVICE
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` (or ``rediss+sentinel://``) URL."""
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ClusterConfigError(f"WS_REDIS_URL {redact(url)!r}: a sentinel without a host ({item!r})")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ClusterConfigError(f"WS_REDIS_URL {redact(url)!r}: {port_text!r} is not a port")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The :class:`SentinelAddress` a ``redis+sentinel://`` URL names; :class:`ClusterConfigError` if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ClusterConfigError(f"WS_REDIS_URL {redact(url)!r} is no redis+sentinel:// URL")
    parts = urlsplit("x://" + rest)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_host_port(item.strip(), url) for item in hosts.split(",") if item.strip())
    if not sentinels:
        raise ClusterConfigError(
            f"WS_REDIS_URL {redact(url)!r} names no sentinel: redis+sentinel://host:26379,host:26380/mymaster/0"
        )
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if len(segments) >= 2 and segments[0].isdigit() and not segments[1].isdigit():
        segments = [segments[1], segments[0], *segments[2:]]  # python-socketio's /db/service
    if len(segments) > 2:
        raise ClusterConfigError(f"WS_REDIS_URL {redact(url)!r}: the path is /service[/db], not {parts.path!r}")
    service = segments[0] if segments else DEFAULT_SERVICE
    db_text = segments[1] if len(segments) > 1 else "0"
    if not db_text.isdigit():
        raise ClusterConfigError(f"WS_REDIS_URL {redact(url)!r}: the database must be a number, not {db_text!r}")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if "db" in query:
        if not query["db"].isdigit():
            raise ClusterConfigError(f"WS_REDIS_URL {redact(url)!r}: db must be a number, not {query['db']!r}")
        db_text = query["db"]
    return SentinelAddress(
        sentinels=sentinels,
        service=service,
        db=int(db_text),
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
        ssl=scheme.lower() == "rediss+sentinel",
    )


def redact(url: str) -> str:
    """``url`` with its password (and a ``sentinel_password``) replaced by ``***``, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = userinfo.split(":", 1)[0] + ":***@" + hosts
    if "sentinel_password=" in tail:
        head, _, query = tail.partition("?")
        query = "&".join(
            "sentinel_password=***" if item.startswith("sentinel_password=") else item for item in query.split("&")
        )
        tail = f"{head}?{query}"
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def redis_client(url: str, **options: Any) -> Any:
    """redis-py's client for ``url``: ``Redis.from_url``, or the Sentinel-managed client of the primary.

    ``options`` (timeouts, ``retry``) go to the connections to Redis; under
    Sentinel the sentinels get the same timeouts and no retries (redis-py asks
    the next sentinel instead).
    """
    import redis

    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)

    address = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    if address.sentinel_password is not None:
        sentinel_options["password"] = address.sentinel_password
    if address.sentinel_username is not None:
        sentinel_options["username"] = address.sentinel_username
    if address.ssl:
        sentinel_options["ssl"] = True
    sentinel = _newest_sentinel_class()(list(address.sentinels), sentinel_kwargs=sentinel_options)
    primary_options = dict(options, db=address.db)
    if address.password is not None:
        primary_options["password"] = address.password
    if address.username is not None:
        primary_options["username"] = address.username
    if address.ssl:
        primary_options["ssl"] = True
    return sentinel.master_for(address.service, **primary_options)


def _newest_sentinel_class() -> type:
    """redis-py's ``Sentinel``, asking every sentinel and taking the primary of the newest configuration."""
    from redis.exceptions import ConnectionError, ResponseError, TimeoutError
    from redis.sentinel import MasterNotFoundError, Sentinel

    class NewestSentinel(Sentinel):
        """Sentinels asked in turn; the primary named with the highest ``config-epoch`` wins.

        Right after a failover a sentinel may still name the old primary (the new
        configuration reaches it within a second or two): the first answer may be stale.
        """

        def discover_master(self, service_name: str) -> tuple[str, int]:
            """The (host, port) of ``service_name``'s primary; ``MasterNotFoundError`` if none is up."""
            best: tuple[int, tuple[str, int]] | None = None
            errors = []
            self.answered = 0
            for sentinel in self.sentinels:
                try:
                    state = sentinel.sentinel_masters().get(service_name)
                except (ConnectionError, ResponseError, TimeoutError) as exc:
                    errors.append(f"{sentinel}: {exc}")
                    continue
                self.answered += 1
                if state and self.check_master_state(state, service_name):
                    epoch = int(state.get("config-epoch") or 0)
                    if best is None or epoch > best[0]:
                        best = (epoch, (state["ip"], int(state["port"])))
            if best is None:
                detail = f": {', '.join(errors)}" if errors else ""
                raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")
            return best[1]

    return NewestSentinel


def sentinel_primary(client: Any) -> tuple[str, int] | None:
    """The primary the sentinels name now for ``client`` (made by :func:`redis_client`).

    None for a client of a plain URL, or when no sentinel answers (then nothing
    says the present primary changed). Raises redis-py's ``MasterNotFoundError``
    when sentinels answer but name no primary that is up. Asking also drops the
    client's idle connections to a primary no longer named.
    """
    pool = client.connection_pool
    if not hasattr(pool, "get_master_address"):
        return None
    from redis.sentinel import MasterNotFoundError

    try:
        return tuple(pool.get_master_address())
    except MasterNotFoundError:
        if not getattr(pool.sentinel_manager, "answered", 1):
            return None
        raise


def close_client(client: Any) -> None:
    """Close ``client`` and, under Sentinel, its connections to the sentinels."""
    client.close()
    sentinel = getattr(client.connection_pool, "sentinel_manager", None)
    if sentinel is not None:
        sentinel.close()
