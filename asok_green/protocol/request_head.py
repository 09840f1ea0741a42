"""An upgrade request's head, parsed once: request line and header fields, no WSGI environ.

Pure logic over the fields the server read strictly
(:mod:`asok_green.protocol.http_head`, which refuses malformed and ambiguous
heads first). :func:`upgrade_head` accepts only a well-formed ``HTTP/1.1``
WebSocket upgrade request; anything else (plain HTTP, HTTP/1.0) gets None, and
the server then hands the request to gevent's ``pywsgi``. What a head holds is
what ``pywsgi`` would have made of the same bytes:

* header names are case-insensitive; a name holding ``_`` is dropped (``pywsgi``
  strips it from the environ, so ``X_Forwarded_For`` never passes for
  ``X-Forwarded-For``);
* a repeated header's values are joined with ``,``, cookies with ``; ``;
  ``Content-Type`` and ``Content-Length`` keep their first value;
* values are stripped (obsolete folded lines never get here: they are refused).

:attr:`RequestHead.variables` holds the CGI names the handshake's decisions read
(``REQUEST_METHOD``, ``SERVER_PROTOCOL``, ``PATH_INFO``, ``QUERY_STRING``,
``REMOTE_ADDR``, ``wsgi.url_scheme``, ``HTTP_*``), and :attr:`RequestHead.fields`
the headers under lower-case names, as ``conn.headers`` gives them. A head also
answers the part of ``http.client.HTTPMessage`` that ``pywsgi`` reads from a
request's headers, so ``pywsgi`` can still build the full environ from it when
something asks for one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from .http_head import BadHead, read_fields

__all__ = ["RequestHead", "parse_upgrade_head", "upgrade_head"]

#: Lower-case names and CGI keys of the headers a browser's handshake carries: shared strings,
#: so the headers every connection keeps do not hold copies of the same names.
_KNOWN = {
    name: "HTTP_" + name.upper().replace("-", "_")
    for name in (
        "host",
        "upgrade",
        "connection",
        "origin",
        "cookie",
        "user-agent",
        "pragma",
        "cache-control",
        "accept-encoding",
        "accept-language",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "authorization",
    )
}
_NAMES = {name: name for name in _KNOWN}
_BODY_KEYS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


class RequestHead:
    """The request line and headers of one upgrade request.

    Attributes:
        requestline: the request line, trailing whitespace removed.
        method, target, version: its three words (``GET``, ``/chat?x=1``, ``HTTP/1.1``).
        fields: header values by lower-case name (``conn.headers``).
        variables: the CGI variables of the request (see the module's docstring);
            the server adds its own keys to it while it decides.
        content_length: the ``Content-Length`` value, or None.
    """

    __slots__ = ("requestline", "method", "target", "version", "fields", "variables", "content_length")

    #: ``pywsgi`` rejects a request whose header parser set a status; a head never does.
    status = ""

    def __init__(
        self,
        requestline: str,
        method: str,
        target: str,
        version: str,
        fields: dict[str, str],
        variables: dict[str, Any],
        content_length: int | None = None,
    ) -> None:
        """A head from its parts; :func:`upgrade_head` builds them from the parsed fields."""
        self.requestline = requestline
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.variables = variables
        self.content_length = content_length

    @classmethod
    def from_environ(cls, environ: dict[str, Any], requestline: str = "") -> RequestHead:
        """The head of a request ``pywsgi`` parsed itself: its environ is the variables."""
        fields = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                fields[key[5:].replace("_", "-").lower()] = value
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                fields[key.replace("_", "-").lower()] = value
        words = requestline.split()
        target = words[1] if len(words) > 1 else ""
        return cls(
            requestline,
            str(environ.get("REQUEST_METHOD", "")),
            target,
            str(environ.get("SERVER_PROTOCOL", "")),
            fields,
            environ,
        )

    # -- what pywsgi reads from a request's headers (http.client.HTTPMessage) ----------

    def get(self, name: str, default: Any = None) -> Any:
        """The value of header ``name`` (any case), or ``default``."""
        return self.fields.get(name.lower(), default)

    def getheader(self, name: str, default: Any = None) -> Any:
        """Same as :meth:`get`."""
        return self.fields.get(name.lower(), default)

    @property
    def typeheader(self) -> str | None:
        """The ``Content-Type`` value, or None."""
        return self.fields.get("content-type")

    @property
    def headers(self) -> Iterator[str]:
        """Every header as a ``"Name: value\\r\\n"`` line (repeated ones already joined)."""
        for name, value in self.fields.items():
            yield f"{name}: {value}\r\n"

    def items(self) -> list[tuple[str, str]]:
        """``(name, value)`` of every header (gunicorn's access log reads them)."""
        return list(self.fields.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.fields

    def __delitem__(self, name: str) -> None:
        self.fields.pop(name.lower(), None)


def parse_upgrade_head(
    requestline: str, lines: list[bytes], remote: tuple | Any = None, scheme: str = "http"
) -> RequestHead | None:
    """The head of a well-formed ``HTTP/1.1`` WebSocket upgrade request, or None for anything else.

    ``requestline`` is the request line (decoded as latin-1), ``lines`` the header
    lines that followed it (read strictly: a malformed block gets None),
    ``remote`` the peer's ``(ip, port)`` and ``scheme`` the connection's
    (``https`` under TLS).
    """
    try:
        pairs = read_fields(lines)
    except BadHead:
        return None
    return upgrade_head(requestline, pairs, remote, scheme)


def upgrade_head(
    requestline: str, pairs: list[tuple[str, str]], remote: tuple | Any = None, scheme: str = "http"
) -> RequestHead | None:
    """The head of a ``GET ... HTTP/1.1`` WebSocket upgrade from its fields ``pairs``, or None for anything else.

    ``pairs`` are the ``(name, value)`` fields as
    :func:`asok_green.protocol.http_head.read_fields` read them (names in lower case); the request's
    framing is checked separately (:func:`asok_green.protocol.http_head.body_framing`).
    """
    words = requestline.split()
    if len(words) != 3 or words[2] != "HTTP/1.1":
        return None
    fields: dict[str, str] = {}
    for lower, value in pairs:
        previous = fields.get(lower)
        if previous is None:
            if "_" not in lower:  # as pywsgi does: no header may pass for another with dashes
                fields[_NAMES.get(lower, lower)] = value
        elif lower not in _BODY_KEYS:
            fields[lower] = previous + ("; " if "cookie" in lower else ",") + value
    upgrade = fields.get("upgrade", "")
    if upgrade.lower() != "websocket" and "websocket" not in _tokens(upgrade):
        return None
    if "transfer-encoding" in fields:
        return None
    length = fields.get("content-length")
    content_length = None
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            return None
        content_length = int(length)
    method, target, version = words
    path, _, query = target.partition("?")
    variables: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SERVER_PROTOCOL": version,
        "PATH_INFO": unquote(path, encoding="latin-1") if "%" in path else path,
        "QUERY_STRING": query,
        "wsgi.url_scheme": scheme,
    }
    if isinstance(remote, tuple) and remote:
        variables["REMOTE_ADDR"] = str(remote[0])
        if len(remote) > 1:
            variables["REMOTE_PORT"] = str(remote[1])
    for name, value in fields.items():
        variables[_KNOWN.get(name) or _BODY_KEYS.get(name) or "HTTP_" + name.upper().replace("-", "_")] = value
    return RequestHead(requestline.rstrip(), method, target, version, fields, variables, content_length)


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}
