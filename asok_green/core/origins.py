"""The Origin policy: which web pages may open a WebSocket to this server.

A browser always sends an ``Origin`` header with a WebSocket handshake, and
it also sends the site's cookies, so a server that accepted any Origin would
let any web page act as the logged-in user (cross-site WebSocket hijacking).
:class:`OriginPolicy` is built once from the settings Asok users already know
and then answers one question per handshake. It is pure logic: no I/O.

Settings, first one given wins (as in Asok):

1. the ``allowed_origins`` argument (a list, or a comma-separated string);
2. the ``WS_ALLOWED_ORIGINS`` environment variable (comma-separated);
3. ``app.config["CORS_ORIGINS"]`` (a list, or a comma-separated string).

Whatever is configured, localhost, 127.0.0.1 and [::1] on the common
development ports stay allowed, and so does the page's own origin (its host
and port equal the ``Host`` header, or what a trusted proxy forwarded: see
``asok_green.core.proxies``), so serving pages and WebSockets from one port needs
no configuration at all.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InsecureOriginPolicy", "OriginPolicy"]

#: Wildcard patterns longer than this are ignored, as Asok does.
MAX_PATTERN_LENGTH = 200
#: One ``*`` matches at most this many characters.
MAX_STAR_LENGTH = 200
#: Longer Origin headers are refused outright (a DNS name is at most 253).
MAX_ORIGIN_LENGTH = 2048
#: Ports on which a localhost origin is allowed without configuration.
COMMON_DEV_PORTS = (8000, 3000, 5173, 5000, 8080, 8001)

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOCAL_SCHEMES = frozenset({"http", "https"})
_HOST_CHARS = frozenset(string.ascii_letters + string.digits + ".-")
_PORT_CHARS = frozenset(string.digits)
_NOT_IN_ORIGIN = frozenset("/?#@\\ \t")
_TRUE_FLAGS = ("1", "true")
_MAX_PORT = 65535
_MAX_PORT_DIGITS = 5
#: Answers :meth:`OriginPolicy.allows` remembers, for Origin and Host headers this short at most.
_MAX_ANSWERS = 256
_MAX_REMEMBERED_LENGTH = 512


class InsecureOriginPolicy(ValueError):
    """The settings would let any web site open a WebSocket in production."""


@dataclass(frozen=True)
class OriginPolicy:
    """Decides which Origin header values may open a WebSocket.

    Build it with :meth:`from_settings`; the bare constructor gives the
    default policy (local development origins and the page's own origin).

    Attributes:
        exact: allowed origins, lower-cased, without a trailing slash.
        wildcards: patterns such as ``https://*.example.com``.
        local_ports: ports on which localhost origins are allowed.
        any_local_port: ``"*"`` in DEBUG: localhost on any port.
        allow_no_origin: whether a handshake without Origin may proceed.
        ignored: wildcard patterns dropped for being too long.
    """

    exact: frozenset[str] = frozenset()
    wildcards: tuple[str, ...] = ()
    local_ports: frozenset[int] = frozenset(COMMON_DEV_PORTS)
    any_local_port: bool = False
    allow_no_origin: bool = False
    ignored: tuple[str, ...] = ()
    #: Recent answers by (origin, host, scheme): a site's handshakes repeat the same few.
    _answers: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_settings(
        cls,
        allowed_origins: str | Iterable[str] | None = None,
        config: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        local_ports: Iterable[int | str] = (),
    ) -> OriginPolicy:
        """Build the policy from the constructor value, environment and app config.

        ``config`` is ``app.config`` (or None without an app); ``environ``
        defaults to ``os.environ``. ``local_ports`` adds ports on which
        localhost origins are allowed (the WebSocket port, the app's port);
        ``ASOK_PORT`` and ``config["WS_PORT"]`` are added as well.

        Raises :class:`InsecureOriginPolicy` if ``"*"`` is configured while
        DEBUG is off.
        """
        env = os.environ if environ is None else environ
        entries = _configured_origins(allowed_origins, config, env)
        any_origin = "*" in entries
        if any_origin and not _is_debug(config, env):
            raise InsecureOriginPolicy(
                "allowed_origins='*' is refused when DEBUG is off: any web site "
                "could open a WebSocket with your users' cookies. List your "
                "domains instead, e.g. WS_ALLOWED_ORIGINS=https://example.com"
            )
        patterns = [e for e in entries if "*" in e and e != "*"]
        return cls(
            exact=frozenset(e for e in entries if "*" not in e),
            wildcards=tuple(p for p in patterns if len(p) <= MAX_PATTERN_LENGTH),
            ignored=tuple(p for p in patterns if len(p) > MAX_PATTERN_LENGTH),
            local_ports=frozenset(COMMON_DEV_PORTS) | _extra_ports(local_ports, config, env),
            any_local_port=any_origin,
            # Asok also lets Origin-less clients in when "*" is used in DEBUG.
            allow_no_origin=any_origin or _no_origin_allowed(config, env),
        )

    def allows(self, origin: str | None, host: str | None = None, scheme: str | None = None) -> bool:
        """Return True if a handshake with this Origin (and Host) header may proceed.

        ``scheme`` is the page's scheme when it is known (a trusted proxy's
        ``X-Forwarded-Proto``): the page's own origin must then have it too.
        """
        if len(origin or "") + len(host or "") > _MAX_REMEMBERED_LENGTH:
            return self._decide(origin, host, scheme)
        key = (origin, host, scheme)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._decide(origin, host, scheme)
            if len(self._answers) >= _MAX_ANSWERS:
                self._answers.clear()  # many distinct origins: start over rather than grow
            self._answers[key] = answer
        return answer

    def _decide(self, origin: str | None, host: str | None, scheme: str | None) -> bool:
        if not origin:
            return self.allow_no_origin
        if len(origin) > MAX_ORIGIN_LENGTH:
            return False
        origin = origin.lower().rstrip("/")
        if origin in self.exact:
            return True
        if any(_matches_wildcard(origin, p) for p in self.wildcards):
            return True
        parts = _split_origin(origin)
        if parts is None:
            return False
        return self._is_local(*parts) or _is_same_host(*parts, host, scheme)

    def describe(self) -> str:
        """Return one line for the startup log saying which origins are allowed."""
        pieces = [*sorted(self.exact), *self.wildcards]
        if self.any_local_port:
            pieces.append("localhost, 127.0.0.1 and [::1] on any port ('*' in DEBUG)")
        else:
            ports = ", ".join(str(p) for p in sorted(self.local_ports))
            pieces.append(f"localhost, 127.0.0.1 and [::1] on no port or {ports}")
        pieces.append("the page's own host")
        text = "WebSocket origins allowed: " + "; ".join(pieces)
        text += ". Without Origin: " + ("allowed" if self.allow_no_origin else "refused")
        if self.ignored:
            text += f". Ignored (over {MAX_PATTERN_LENGTH} chars): {len(self.ignored)}"
        return text

    def _is_local(self, scheme: str, host: str, port: int | None) -> bool:
        if host not in _LOCAL_HOSTS:
            return False
        if self.any_local_port:
            return scheme in _DEFAULT_PORTS
        return scheme in _LOCAL_SCHEMES and (port is None or port in self.local_ports)


def _configured_origins(allowed_origins: Any, config: Mapping[str, Any] | None, env: Mapping[str, str]) -> list[str]:
    """Return the normalised entries of the first source that has any."""
    cors = config.get("CORS_ORIGINS") if config is not None else None
    for source in (allowed_origins, env.get("WS_ALLOWED_ORIGINS"), cors):
        entries = _normalise(_as_list(source))
        if entries:
            return entries
    return []


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return []


def _normalise(entries: list[str]) -> list[str]:
    cleaned = (e.strip().lower().rstrip("/") for e in entries)
    return [e for e in cleaned if e]


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_FLAGS
    return bool(value)


def _is_debug(config: Mapping[str, Any] | None, env: Mapping[str, str]) -> bool:
    if config is not None:
        return _flag(config.get("DEBUG"))
    debug = str(env.get("DEBUG", "")).lower()
    return debug != "false" and env.get("ASOK_ENV") != "production"


def _no_origin_allowed(config: Mapping[str, Any] | None, env: Mapping[str, str]) -> bool:
    if _flag(env.get("WS_ALLOW_NO_ORIGIN", "")):
        return True
    return config is not None and _flag(config.get("ALLOW_WEBSOCKET_NO_ORIGIN"))


def _extra_ports(
    ports: Iterable[int | str], config: Mapping[str, Any] | None, env: Mapping[str, str]
) -> frozenset[int]:
    candidates = [*ports, env.get("ASOK_PORT")]
    if config is not None:
        candidates.append(config.get("WS_PORT"))
    parsed = (_parse_port(str(p)) for p in candidates if p is not None)
    return frozenset(p for p in parsed if p is not None)


def _parse_port(text: str) -> int | None:
    if not (0 < len(text) <= _MAX_PORT_DIGITS and text.isascii() and text.isdigit()):
        return None
    port = int(text)
    return port if 0 < port <= _MAX_PORT else None


def _split_host_port(authority: str) -> tuple[str, int | None] | None:
    """Split ``host[:port]`` (or ``[v6]:port``); None if malformed."""
    if authority.startswith("["):
        end = authority.find("]") + 1
        if not end:
            return None
        host, rest = authority[:end], authority[end:]
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
    if not host:
        return None
    if not rest:
        return host, None
    port = _parse_port(rest[1:]) if rest.startswith(":") else None
    return None if port is None else (host, port)


def _split_origin(origin: str) -> tuple[str, str, int | None] | None:
    """Split a lower-cased ``scheme://host[:port]`` origin; None if it is not one."""
    scheme, sep, authority = origin.partition("://")
    if not (sep and scheme and authority) or not _NOT_IN_ORIGIN.isdisjoint(authority):
        return None
    host_port = _split_host_port(authority)
    return None if host_port is None else (scheme, *host_port)


def _is_same_host(
    scheme: str, host: str, port: int | None, host_header: str | None, page_scheme: str | None = None
) -> bool:
    """True if the origin names the host the request was sent to (and its scheme, when known).

    Default ports follow the origin's scheme: ``http://a.com`` is ``a.com:80``.
    """
    if page_scheme is not None and scheme != page_scheme.lower():
        return False
    default = _DEFAULT_PORTS.get(scheme)
    if not host_header or default is None or len(host_header) > MAX_ORIGIN_LENGTH:
        return False
    target = _split_host_port(host_header.strip().lower())
    if target is None:
        return False
    target_host, target_port = target
    return host == target_host and (port or default) == (target_port or default)


def _matches_wildcard(origin: str, pattern: str) -> bool:
    """Match ``origin`` against a pattern where ``*`` is 1 to 200 host characters.

    A ``*`` right after ``:`` is a port and matches digits only. The pattern is
    split on ``*`` and the literal parts are checked with ``startswith`` and
    ``endswith``; the set of positions where each ``*`` may start is tracked
    forward, so the work is bounded by the lengths, with no backtracking.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        return False
    parts = pattern.split("*")
    head, tail = parts[0], parts[-1]
    stars = len(parts) - 1
    longest = len(pattern) - stars + stars * MAX_STAR_LENGTH
    if len(origin) > longest or len(origin) < len(head) + len(tail) + stars:
        return False
    if not (origin.startswith(head) and origin.endswith(tail)):
        return False
    stop = len(origin) - len(tail)
    starts = {len(head)}
    for index in range(1, len(parts)):
        allowed = _PORT_CHARS if parts[index - 1].endswith(":") else _HOST_CHARS
        ends = _star_ends(origin, starts, stop, allowed)
        literal = parts[index]
        if index == stars:
            return stop in ends
        starts = {e + len(literal) for e in ends if origin.startswith(literal, e, stop)}
        if not starts:
            return False
    return False


def _star_ends(text: str, starts: set[int], stop: int, allowed: frozenset[str]) -> set[int]:
    """Return where a ``*`` starting at one of ``starts`` may end (1 to 200 chars)."""
    ends: set[int] = set()
    reach = 0
    for start in sorted(starts):
        # Runs from earlier starts already proved text[start:reach] allowed, so
        # each character is scanned once: linear in len(text), not quadratic.
        pos = max(start, reach)
        limit = min(stop, start + MAX_STAR_LENGTH)
        while pos < limit and text[pos] in allowed:
            pos += 1
            ends.add(pos)
        reach = max(reach, pos)
    return ends
