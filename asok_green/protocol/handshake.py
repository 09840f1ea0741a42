"""The opening handshake as decisions on a WSGI environ: is it an upgrade, is it valid.

Pure functions: the server does the I/O and asks these what to answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus

from .deflate import PerMessageDeflate, negotiate
from .frames import accept_key, is_valid_client_key

WEBSOCKET_VERSION = "13"

#: The environ key holding the subprotocol chosen for an admitted handshake (see :func:`accept_subprotocol`).
SUBPROTOCOL_KEY = "asok_green.subprotocol"


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer that declines an upgrade request: status, a one-line reason, extra headers."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def status_line(self) -> str:
        """``"403 Forbidden"`` and the like."""
        return f"{self.status} {HTTPStatus(self.status).phrase}"


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def is_upgrade_request(environ: Mapping[str, str]) -> bool:
    """True when the request asks to become a WebSocket (``Upgrade: websocket``)."""
    return "websocket" in _tokens(environ.get("HTTP_UPGRADE", ""))


def check_upgrade(environ: Mapping[str, str]) -> Refusal | None:
    """Why an upgrade request is not a valid RFC 6455 handshake, or None if it is."""
    if environ.get("REQUEST_METHOD") != "GET":
        return Refusal(405, "a WebSocket handshake must be a GET", (("Allow", "GET"),))
    if environ.get("SERVER_PROTOCOL", "") < "HTTP/1.1":
        return Refusal(400, "a WebSocket handshake needs HTTP/1.1")
    if "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        return Refusal(400, "the Connection header must include 'upgrade'")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != WEBSOCKET_VERSION:
        return Refusal(
            426,
            "unsupported Sec-WebSocket-Version (this server speaks 13)",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    if not is_valid_client_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()):
        return Refusal(400, "missing or invalid Sec-WebSocket-Key")
    return None


def choose_compression(environ: Mapping[str, str], enabled: bool = True) -> PerMessageDeflate | None:
    """The permessage-deflate parameters to accept, or None to go uncompressed.

    None when compression is turned off or the client offers no valid
    permessage-deflate (a malformed offer is declined, not refused).
    """
    if not enabled:
        return None
    return negotiate(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"))


def choose_subprotocol(environ: Mapping[str, str], accepted: Iterable[str]) -> str | None:
    """The first subprotocol the client offers (``Sec-WebSocket-Protocol``) that is ``accepted``, or None.

    None when the client offers none, or none of those offered is accepted: the
    answer then names no subprotocol (RFC 6455 section 4.2.2), and a client that
    required one gives up on its own.
    """
    accepted = set(accepted)
    if not accepted:
        return None
    for offered in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(","):
        offered = offered.strip()
        if offered in accepted:
            return offered
    return None


def accept_subprotocol(environ: MutableMapping[str, str], accepted: Iterable[str]) -> str | None:
    """Choose the subprotocol of an admitted handshake and keep it in ``environ`` for :func:`response_headers`."""
    chosen = choose_subprotocol(environ, accepted)
    if chosen is None:
        environ.pop(SUBPROTOCOL_KEY, None)
    else:
        environ[SUBPROTOCOL_KEY] = chosen
    return chosen


def response_headers(environ: Mapping[str, str], deflate: PerMessageDeflate | None = None) -> list[tuple[str, str]]:
    """The headers of the ``101 Switching Protocols`` answer to a valid handshake.

    With ``deflate`` the answer accepts permessage-deflate with those
    parameters; with a subprotocol chosen by :func:`accept_subprotocol` it
    names that subprotocol.
    """
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(environ["HTTP_SEC_WEBSOCKET_KEY"].strip())),
    ]
    subprotocol = environ.get(SUBPROTOCOL_KEY)
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if deflate is not None:
        headers.append(("Sec-WebSocket-Extensions", deflate.response_header()))
    return headers


def request_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """The request's headers as Asok gives them to handlers: lower-case, dash-separated keys."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers[key.replace("_", "-").lower()] = value
    return headers
