"""The browser's resume client, shipped in the package and served at ``/asok/green/resume.js``.

``client_assets/resume.js`` makes ``window.asokWS(path, {resume: true})`` a socket
that speaks asok-green.v1: it reconnects with backoff and jitter, resumes each
stream where it left it and tells the page when continuity was lost. Plain
``window.asokWS(path)`` stays Asok's helper.

Every page whose template calls ``asokWS`` gets a ``<script src>`` for it (with the
page's CSP nonce); a page that calls it from a script file of its own can load
the same URL. The file holds no data, so anyone may fetch it; its URL carries a
hash of its content, so browsers may cache it for long.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
from dataclasses import dataclass
from typing import Any

SCRIPT_PATH = "/asok/green/resume.js"
SCRIPT_FILE = pathlib.Path(__file__).resolve().parent / "client_assets" / "resume.js"
_CACHE_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status line, headers and body."""

    status: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@functools.cache
def script() -> bytes:
    """The client's source, read once from the package."""
    return SCRIPT_FILE.read_bytes()


@functools.cache
def script_url() -> str:
    """The URL pages load the client from: its path and a hash of its content."""
    return f"{SCRIPT_PATH}?v={hashlib.sha256(script()).hexdigest()[:12]}"


def script_tag(nonce: str | None) -> str:
    """A ``<script>`` element that loads the client, allowed by the page's CSP nonce."""
    nonce_attr = f' nonce="{nonce}"' if nonce else ""
    return f'<script src="{script_url()}"{nonce_attr}></script>\n'


def answer(method: str) -> Answer:
    """What a request for the script gets: the file for GET and HEAD, 405 otherwise."""
    if method not in ("GET", "HEAD"):
        body = b"method not allowed\n"
        headers = (("Content-Type", "text/plain; charset=utf-8"), ("Allow", "GET, HEAD"))
        return Answer("405 Method Not Allowed", (*headers, ("Content-Length", str(len(body)))), body)
    body = script()
    headers = (
        ("Content-Type", "text/javascript; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", f"public, max-age={_CACHE_SECONDS}"),
        ("X-Content-Type-Options", "nosniff"),
    )
    return Answer("200 OK", headers, body)


def serve(handler: Any) -> bool:
    """Answer pywsgi ``handler``'s request if it is for the script; False to let others have it."""
    # The request's CGI variables, without building a whole WSGI environ when the handler has them apart.
    variables = getattr(handler, "request_variables", None)
    if variables is None:
        variables = handler.environ
    if variables.get("PATH_INFO") != SCRIPT_PATH:
        return False
    method = variables.get("REQUEST_METHOD") or "GET"
    found = answer(method)
    handler.start_response(found.status, list(found.headers))
    handler.write(b"" if method == "HEAD" else found.body)
    return True
