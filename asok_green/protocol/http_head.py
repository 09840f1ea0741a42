"""A request head read strictly (RFC 9112): header fields and the body's framing, or a reason to refuse.

Pure logic over the bytes the server read. Every request, page or upgrade,
goes through :func:`read_fields` and :func:`body_framing` before anything else
sees it, so the server and any proxy in front of it cannot disagree on where
a request ends (request smuggling). Refused with :class:`BadHead` (the server
answers 400 and closes the connection):

* a header line that is not ``token ":" value``: whitespace between the name
  and the colon (section 5.1), an obsolete folded line (one starting with a
  space or a tab, section 5.2), a line without a colon;
* a control character (NUL, a lone CR, anything below 0x20 but HTAB, DEL) in a
  name or a value (section 5.5);
* ``Content-Length`` together with ``Transfer-Encoding``, in either order
  (section 6.1);
* a ``Transfer-Encoding`` other than one field holding exactly ``chunked``
  (``chunked, identity``, ``xchunked``, ``identity``, the field twice), and
  any ``Transfer-Encoding`` on an HTTP/1.0 request (section 6.1);
* a ``Content-Length`` that is not digits, and any repeated
  ``Content-Length``, even with equal values (section 6.3 requires refusing
  differing ones; refusing every repeat is simpler and no client needs it);
* no ``Host`` on an HTTP/1.1 request, or more than one (section 3.2);
* a WebSocket upgrade request with a body (a ``Transfer-Encoding``, or a
  ``Content-Length`` other than 0): an upgrade is a GET whose next bytes
  are frames.

Line endings may be CRLF or a bare LF (section 2.2 allows it); a lone CR is
refused.
"""

from __future__ import annotations

import re

__all__ = ["BadHead", "Framing", "asks_websocket", "body_framing", "read_fields"]

#: Longest Content-Length accepted, in digits (beyond any body a server would take).
MAX_LENGTH_DIGITS = 18

#: A header block (line ends already LF): lines of ``token ":" value``, a value of visible
#: characters, spaces, tabs and obs-text (0x80-0xFF), nothing else.
_BLOCK = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\n)*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class BadHead(ValueError):
    """The request's head is malformed or ambiguous; the message says how (safe to log, no client bytes)."""


class Framing:
    """Where a request's body ends (``content_length`` bytes, ``chunked``, or none); whether it asks for a WebSocket."""

    __slots__ = ("content_length", "chunked", "websocket")

    def __init__(self, content_length: int | None, chunked: bool, websocket: bool = False) -> None:
        """The framing a head announced."""
        self.content_length = content_length
        self.chunked = chunked
        self.websocket = websocket

    @property
    def has_body(self) -> bool:
        """True if the request announces a body (chunked, or a length above 0)."""
        return self.chunked or bool(self.content_length)


def read_fields(lines: list[bytes]) -> list[tuple[str, str]]:
    """``(name, value)`` of each header line, names in lower case, values stripped; :class:`BadHead` if malformed.

    ``lines`` are the raw lines between the request line and the blank line,
    each ending with its ``\\n``.
    """
    text = b"".join(lines).decode("latin-1")
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            raise BadHead("a carriage return inside a header line")
        text = text.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        raise BadHead("the head ended mid-line")
    if _BLOCK.fullmatch(text) is None:
        raise BadHead(_describe(text))
    pairs = []
    for line in text.split("\n")[:-1]:
        name, _, value = line.partition(":")
        pairs.append((name.lower(), value.strip(" \t")))
    return pairs


def _describe(text: str) -> str:
    """Why a block the fast pattern refused is malformed: the first bad line's fault."""
    for line in text.split("\n")[:-1]:
        name, colon, value = line.partition(":")
        if line[:1] in (" ", "\t"):
            return "an obsolete folded header line"
        if not colon:
            return "a header line without a colon"
        if name.rstrip(" \t") != name:
            return "whitespace between a header name and its colon"
        if _TOKEN.fullmatch(name) is None:
            return "a header name with a character a token may not hold"
        if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
            return "a control character in a header value"
    return "a malformed header line"


def body_framing(version: str, pairs: list[tuple[str, str]]) -> Framing:
    """The body's framing the fields ``pairs`` (:func:`read_fields`) announce on a ``version`` request.

    :class:`BadHead` if it is ambiguous.
    A request that asks for a WebSocket (:func:`asks_websocket`) may carry no body.
    """
    hosts = lengths = encodings = 0
    length = encoding = None
    websocket = False
    for name, value in pairs:
        if name == "host":
            hosts += 1
        elif name == "content-length":
            lengths += 1
            length = value
        elif name == "transfer-encoding":
            encodings += 1
            encoding = value
        elif name == "upgrade" and not websocket:
            websocket = _names_websocket(value)
    if hosts > 1:
        raise BadHead("more than one Host")
    if hosts == 0 and version == "HTTP/1.1":
        raise BadHead("no Host on an HTTP/1.1 request")
    if lengths and encodings:
        raise BadHead("both Content-Length and Transfer-Encoding")
    if lengths > 1:
        raise BadHead("more than one Content-Length")
    if encodings:
        if encodings > 1:
            raise BadHead("more than one Transfer-Encoding")
        if version != "HTTP/1.1":
            raise BadHead("Transfer-Encoding on an HTTP/1.0 request")
        if encoding is None or encoding.lower() != "chunked":
            raise BadHead("a Transfer-Encoding other than chunked")
        if websocket:
            raise BadHead("an upgrade request with a body")
        return Framing(None, True)
    if length is None:
        return Framing(None, False, websocket)
    if not (length.isascii() and length.isdigit()) or len(length) > MAX_LENGTH_DIGITS:
        raise BadHead("a Content-Length that is not a number")
    content_length = int(length)
    if content_length and websocket:
        raise BadHead("an upgrade request with a body")
    return Framing(content_length, False, websocket)


def asks_websocket(pairs: list[tuple[str, str]]) -> bool:
    """True if an ``Upgrade`` field names ``websocket`` (any case, among other protocols or alone)."""
    return any(name.lower() == "upgrade" and _names_websocket(value) for name, value in pairs)


def _names_websocket(value: str) -> bool:
    lower = value.lower()
    return lower == "websocket" or "websocket" in {token.strip() for token in lower.split(",")}
