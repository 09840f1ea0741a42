"""Behind a reverse proxy: who the client is, where its page lives, and the WebSocket prefix.

Pure logic over a WSGI environ; the server applies the answers (``server.py``).

``TRUSTED_PROXIES`` is Asok's setting (``app.config``, or the environment variable
of that name, which Asok copies into the config):

- ``None`` or empty (the default): no peer is trusted, forwarding headers are ignored;
- ``"*"``: every peer is trusted (only when nothing but the proxy can reach the port);
- a list, tuple or set of addresses, or a comma-separated string: exactly those
  peers are trusted. Addresses are compared as written, as Asok does (no CIDR ranges).

From a trusted peer, as in Asok's ``request.ip``, the client is the first
(leftmost) address of ``X-Forwarded-For``; without that header, ``X-Real-IP``.
``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Forwarded-Port`` (first value
each) say where the browser loaded the page from; without them the ``Host``
header does. Headers from any other peer are ignored.

``WS_PATH`` (``app.config`` or the environment; e.g. ``/ws``) is a prefix the
proxy puts before every WebSocket path: ``/ws/chat/general`` reaches the route
``/chat/general``, and pages are told the prefix as ``window.ASOK_WS_PATH``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PAGE_KEY",
    "PageAddress",
    "ProxyPolicy",
    "client_address",
    "forwarded_scheme",
    "page_address",
    "page_port",
    "proxy_policy",
    "proxy_settings",
    "route_path",
    "ws_path",
    "ws_path_script",
]

#: The environ key under which the server keeps a request's :class:`PageAddress`.
PAGE_KEY = "asok_green.page"

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_MAX_HOST_LENGTH = 253
_MAX_PORT = 65535
_MAX_PATH_LENGTH = 200
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + "/-._~")


@dataclass(frozen=True)
class ProxyPolicy:
    """Which peers may tell the server who the client is.

    Attributes:
        trust_any: ``TRUSTED_PROXIES = "*"``.
        addresses: the trusted peers' addresses, as configured.
    """

    trust_any: bool = False
    addresses: frozenset[str] = frozenset()

    @classmethod
    def from_setting(cls, value: Any) -> ProxyPolicy:
        """Build the policy from a ``TRUSTED_PROXIES`` value (see the module's docstring)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            entries = value.split(",")
        elif isinstance(value, Iterable):
            entries = [str(v) for v in value]
        else:
            return cls()
        cleaned = frozenset(e.strip() for e in entries if e.strip())
        return cls(trust_any="*" in cleaned, addresses=cleaned - {"*"})

    def trusts(self, peer: str | None) -> bool:
        """True if forwarding headers from ``peer`` (the socket's remote address) are believed."""
        if not peer:
            return False
        return self.trust_any or peer in self.addresses

    @property
    def enabled(self) -> bool:
        """True if some peer may be trusted."""
        return self.trust_any or bool(self.addresses)


_last_policy: tuple[Any, ProxyPolicy] = (None, ProxyPolicy())


def proxy_policy(config: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> ProxyPolicy:
    """The policy of ``config["TRUSTED_PROXIES"]`` (or the ``TRUSTED_PROXIES`` env var without it).

    Rebuilt only when the setting changes (it is read on every request).
    """
    global _last_policy
    if config is not None and "TRUSTED_PROXIES" in config:
        value = config.get("TRUSTED_PROXIES")
    else:
        value = (os.environ if environ is None else environ).get("TRUSTED_PROXIES")
    cached_value, policy = _last_policy
    if value is cached_value or value == cached_value:
        return policy
    policy = ProxyPolicy.from_setting(value)
    _last_policy = (value, policy)
    return policy


_UNSET = object()
_last_settings: tuple[Any, tuple[ProxyPolicy, str]] = (_UNSET, (ProxyPolicy(), ""))


def proxy_settings(config: Mapping[str, Any] | None) -> tuple[ProxyPolicy, str]:
    """``(proxy_policy(config), ws_path(config))`` for a request, cheaply.

    The app's config is read on every call; the environment (which these settings
    fall back to) only when the config's values change, not per request.
    """
    global _last_settings
    key = None if config is None else (id(config), config.get("TRUSTED_PROXIES", _UNSET), config.get("WS_PATH"))
    cached_key, settings = _last_settings
    if key == cached_key:
        return settings
    settings = (proxy_policy(config), ws_path(config))
    _last_settings = (key, settings)
    return settings


def client_address(peer: tuple, environ: Mapping[str, Any], policy: ProxyPolicy) -> tuple:
    """The client's ``(ip, port)``: the peer itself, or the one its trusted proxy names.

    A forwarded client's port is unknown and given as 0. A forwarded value that
    is not an IP address is ignored (the next source is used).
    """
    if not peer or not policy.trusts(str(peer[0])):
        return peer
    for key in ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP"):
        ip = _ip_of(_first(environ.get(key)))
        if ip is not None:
            return (ip, 0)
    return peer


@dataclass(frozen=True)
class PageAddress:
    """Where the browser loaded the page from: ``scheme://host:port``.

    Attributes:
        scheme: ``http`` or ``https``.
        host: the host name, lower-case (an IPv6 address in brackets).
        port: the port, the scheme's default when none was given.
        forwarded: True if a trusted proxy said so (the scheme is then known, not guessed).
    """

    scheme: str
    host: str
    port: int
    forwarded: bool = False

    @property
    def authority(self) -> str:
        """``host`` or ``host:port`` as a browser writes it (no default port)."""
        return self.host if self.port == _DEFAULT_PORTS.get(self.scheme) else f"{self.host}:{self.port}"

    def environ_updates(self) -> dict[str, Any]:
        """The WSGI environ keys that make the app see this address (pages and handshakes).

        ``SERVER_NAME`` follows the ``Host`` header, as gunicorn does: Asok's CSP
        then names the host the browser used instead of warning of a mismatch.
        """
        updates: dict[str, Any] = {"SERVER_NAME": self.host, "SERVER_PORT": str(self.port), PAGE_KEY: self}
        if self.forwarded:
            updates["HTTP_HOST"] = self.authority
            updates["wsgi.url_scheme"] = self.scheme
        return updates


def page_address(environ: Mapping[str, Any], policy: ProxyPolicy) -> PageAddress | None:
    """Where the page of this request lives, or None if the request does not say (no valid Host).

    From a trusted peer, ``X-Forwarded-Proto``/``-Host``/``-Port`` win over the
    connection's scheme and the ``Host`` header.
    """
    scheme = str(environ.get("wsgi.url_scheme") or "http").lower()
    host_header = environ.get("HTTP_HOST")
    forwarded_port: int | None = None
    forwarded = policy.enabled and policy.trusts(str(environ.get("REMOTE_ADDR") or ""))
    if forwarded:
        proto = (_first(environ.get("HTTP_X_FORWARDED_PROTO")) or "").lower()
        if proto in _DEFAULT_PORTS:
            scheme = proto
        host_header = _first(environ.get("HTTP_X_FORWARDED_HOST")) or host_header
        forwarded_port = _port(_first(environ.get("HTTP_X_FORWARDED_PORT")) or "")
    parsed = _host_and_port(host_header)
    if parsed is None:
        return None
    host, port = parsed
    if port is None:
        port = forwarded_port or _DEFAULT_PORTS.get(scheme, 80)
    return PageAddress(scheme, host, port, forwarded)


def forwarded_scheme(environ: Mapping[str, Any]) -> str | None:
    """The page's scheme when a trusted proxy stated it (the server's ``PAGE_KEY``), else None."""
    page = environ.get(PAGE_KEY)
    return page.scheme if isinstance(page, PageAddress) and page.forwarded else None


def page_port(environ: Mapping[str, Any]) -> int | None:
    """The port the browser loaded the page from, if the server worked it out (``PAGE_KEY``)."""
    page = environ.get(PAGE_KEY)
    return page.port if isinstance(page, PageAddress) else None


def ws_path(config: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> str:
    """The WebSocket prefix: ``config["WS_PATH"]``, else the ``WS_PATH`` env var; "" for none.

    Normalised to one leading slash and no trailing one (``ws/`` is ``/ws``). A
    value with characters beyond letters, digits and ``/-._~`` is ignored.
    """
    value = config.get("WS_PATH") if config is not None else None
    if not value:
        value = (os.environ if environ is None else environ).get("WS_PATH")
    text = str(value or "").strip().strip("/")
    if not text or len(text) > _MAX_PATH_LENGTH or not _PATH_CHARS.issuperset(text):
        return ""
    segments = [s for s in text.split("/") if s]
    if any(s in (".", "..") for s in segments):
        return ""
    return "/" + "/".join(segments)


def route_path(path: str, prefix: str) -> str:
    """The route path of a request path: ``prefix`` removed when the path is under it.

    A path outside the prefix is the route path as it stands, so clients that
    connect straight to the server keep working.
    """
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix) :] or "/"
    return path


def ws_path_script(prefix: str, nonce: str) -> str:
    """The ``<script>`` that tells Asok's front-end script the prefix (``window.ASOK_WS_PATH``)."""
    value = json.dumps(prefix).replace("<", "\\u003c")
    return f'<script nonce="{nonce}">window.ASOK_WS_PATH = {value};</script>\n'


def _first(value: Any) -> str | None:
    """The first comma-separated item of a header value, stripped; None if empty."""
    if not value:
        return None
    first = str(value).split(",", 1)[0].strip()
    return first or None


def _ip_of(text: str | None) -> str | None:
    """The IP address in ``text`` (``1.2.3.4``, ``1.2.3.4:5``, ``::1``, ``[::1]:5``), or None."""
    if not text:
        return None
    candidates = [text]
    if text.startswith("["):
        candidates = [text[1 : text.find("]")]] if "]" in text else []
    elif text.count(":") == 1:
        candidates = [text.partition(":")[0]]
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            pass
    return None


def _port(text: str) -> int | None:
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()):
        return None
    port = int(text)
    return port if 0 < port <= _MAX_PORT else None


def _host_and_port(value: Any) -> tuple[str, int | None] | None:
    """Split a ``host[:port]`` header value (``[v6]:port`` too); None if it is not one."""
    if not value or len(str(value)) > _MAX_HOST_LENGTH + 8:
        return None
    text = str(value).strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or _ip_of(text[: end + 1]) is None:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not host or not _HOST_CHARS.issuperset(host):
            return None
    if not rest:
        return host, None
    port = _port(rest[1:]) if rest.startswith(":") else None
    return None if port is None else (host, port)
