"""permessage-deflate (RFC 7692): negotiation and compression, sans-I/O.

The server always answers with ``server_no_context_takeover``: each message
it sends is compressed on its own, so one compressed frame can go to every
client that negotiated the extension with the same window size. That is what
keeps broadcasts "encode once" with compression on.

By default it also asks for ``client_no_context_takeover``, so an idle
connection holds no zlib state: each compressed message from a client is
inflated with a decompressor made for that message and dropped after it.

Nothing here does I/O: :func:`negotiate` reads the client's
``Sec-WebSocket-Extensions`` header and returns the agreed
:class:`PerMessageDeflate`, or None to go without compression.

Deflate comes from zlib-ng (the ``zlib-ng`` package) when it is installed:
the same streams as the standard library's zlib, made two to three times
faster. Without it, the standard library's zlib does the same work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

try:
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - the package is a dependency; stdlib zlib is the fallback
    import zlib

from .frames import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, ProtocolError, encode_frame

__all__ = [
    "COMPRESSION_LEVEL",
    "ENGINE",
    "EXTENSION",
    "Inflater",
    "PerMessageDeflate",
    "compress",
    "compressed_frame",
    "negotiate",
    "parse_extensions",
]

EXTENSION = "permessage-deflate"

#: The module that deflates: ``"zlib_ng"`` or ``"zlib"``.
ENGINE = zlib.__name__.rpartition(".")[2]

#: The fastest level. On JSON and HTML it compresses within a few percent of
#: the default level 6 at three to five times the speed; the server compresses
#: on the same core that serves every client.
COMPRESSION_LEVEL = 1

#: zlib's raw deflate cannot compress with an 8-bit window (it silently uses 9),
#: so offers that limit the server to 256 bytes are declined.
_MIN_SERVER_WINDOW_BITS = 9
_MAX_WINDOW_BITS = 15
_MIN_WINDOW_BITS = 8
_TAIL = b"\x00\x00\xff\xff"
_KNOWN_PARAMS = frozenset(
    (
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    )
)


@dataclass(frozen=True, slots=True)
class PerMessageDeflate:
    """The permessage-deflate parameters agreed with one client.

    ``server_max_window_bits`` is the window the server compresses with (15
    unless the client asked for less). ``client_no_context_takeover`` tells
    whether the client compresses each message on its own;
    ``client_max_window_bits`` is the limit sent to the client, if any.
    The server never takes context over between its messages.
    """

    server_max_window_bits: int = _MAX_WINDOW_BITS
    client_no_context_takeover: bool = True
    client_max_window_bits: int | None = None
    #: Whether the client's offer named ``server_max_window_bits`` (the
    #: answer may then, and only then, name it too).
    server_window_requested: bool = False

    def response_header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value that accepts the offer."""
        parts = [EXTENSION, "server_no_context_takeover"]
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_window_requested:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


def parse_extensions(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Split a ``Sec-WebSocket-Extensions`` value into ``(name, [(param, value)])``, in order.

    Names and parameter names are lower-cased; a quoted value is unquoted;
    a parameter without ``=`` has the value None. Empty elements are skipped.
    """
    offers = []
    for element in header.split(","):
        name, *params = element.split(";")
        name = name.strip().lower()
        if not name:
            continue
        parsed: list[tuple[str, str | None]] = []
        for param in params:
            key, eq, value = param.partition("=")
            key = key.strip().lower()
            if not key:
                continue
            if eq:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                parsed.append((key, value))
            else:
                parsed.append((key, None))
        offers.append((name, parsed))
    return offers


def negotiate(header: str | None, client_context_takeover: bool = False) -> PerMessageDeflate | None:
    """Accept the first valid permessage-deflate offer of ``header``, or return None.

    Offers with unknown or repeated parameters or out-of-range values are
    skipped, as RFC 7692 asks. With ``client_context_takeover`` False (the
    default) the answer always asks the client not to take context over.
    """
    if not header:
        return None
    for name, params in parse_extensions(header):
        if name == EXTENSION:
            agreed = _accept(params, client_context_takeover)
            if agreed is not None:
                return agreed
    return None


def _accept(params: list[tuple[str, str | None]], client_context_takeover: bool) -> PerMessageDeflate | None:
    """The agreement for one offer, or None when the offer must be declined."""
    seen: dict[str, str | None] = {}
    for key, value in params:
        if key not in _KNOWN_PARAMS or key in seen:
            return None
        seen[key] = value
    for flag in ("server_no_context_takeover", "client_no_context_takeover"):
        if seen.get(flag, None) is not None:
            return None
    server_bits = _MAX_WINDOW_BITS
    if "server_max_window_bits" in seen:
        bits = _window_bits(seen["server_max_window_bits"])
        if bits is None or bits < _MIN_SERVER_WINDOW_BITS:
            return None
        server_bits = bits
    if "client_max_window_bits" in seen:
        value = seen["client_max_window_bits"]
        if value is not None and _window_bits(value) is None:
            return None
    return PerMessageDeflate(
        server_max_window_bits=server_bits,
        client_no_context_takeover=not client_context_takeover or "client_no_context_takeover" in seen,
        server_window_requested="server_max_window_bits" in seen,
    )


def _window_bits(value: str | None) -> int | None:
    """An 8-15 window size written as plain decimal digits, else None."""
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if _MIN_WINDOW_BITS <= bits <= _MAX_WINDOW_BITS else None


#: Payloads longer than this are probed first: if their first _PROBE_SIZE
#: bytes do not shrink below _PROBE_RATIO, they are already compressed (images,
#: archives) and go as stored deflate blocks, which cost a copy, not a search.
_PROBE_OVER = 16 * 1024
_PROBE_SIZE = 4 * 1024
_PROBE_RATIO = 0.9

# One compressor per window size (and one that only stores) for the whole
# process. A full flush after each message empties its history, so every
# message is compressed on its own (server_no_context_takeover) while the
# compressors' buffers are reused. Compressing never yields to another
# greenlet, so sharing them needs no lock.
_compressors: dict[int, Any] = {}


def _compressor(level: int, window_bits: int) -> Any:
    key = window_bits if level else 0
    compressor = _compressors.get(key)
    if compressor is None:
        compressor = _compressors[key] = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    return compressor


def _deflate(compressor: Any, payload: bytes) -> bytes:
    data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    # A flush ends with an empty stored block, 00 00 ff ff: RFC 7692 drops it.
    return data[:-4] if data.endswith(_TAIL) else data


def compress(payload: bytes, window_bits: int = _MAX_WINDOW_BITS) -> bytes:
    """``payload`` deflated as one self-contained permessage-deflate message body."""
    compressor = _compressor(COMPRESSION_LEVEL, window_bits)
    if len(payload) > _PROBE_OVER:
        probe = _deflate(compressor, payload[:_PROBE_SIZE])
        if len(probe) > _PROBE_SIZE * _PROBE_RATIO:
            compressor = _compressor(0, window_bits)
    return _deflate(compressor, payload)


def compressed_frame(opcode: int, payload: bytes, params: PerMessageDeflate) -> bytes:
    """One compressed frame (RSV1 set) carrying ``payload`` for a client with ``params``."""
    return encode_frame(opcode, compress(payload, params.server_max_window_bits), rsv1=True)


class Inflater:
    """Inflates one client's compressed messages, with a cap on their size.

    With ``no_context_takeover`` each message gets a decompressor of its own
    and nothing is kept between messages; otherwise one decompressor lives as
    long as the connection, created at the first compressed message.
    """

    __slots__ = ("_decompressor", "max_size", "no_context_takeover")

    def __init__(self, max_size: int, no_context_takeover: bool = True) -> None:
        """Refuse messages that inflate to more than ``max_size`` bytes."""
        self.max_size = max_size
        self.no_context_takeover = no_context_takeover
        self._decompressor: Any | None = None

    def inflate(self, data: bytes) -> bytes:
        """The payload of one compressed message.

        Raises :class:`ProtocolError` with 1009 when it would inflate past
        ``max_size`` (without inflating the rest: a small message cannot
        expand into a large allocation) and with 1002 when it is not valid
        deflate data.
        """
        decompressor = self._decompressor
        if decompressor is None or decompressor.eof:
            # The window may be at most 15 bits, and a 15-bit window reads any smaller one.
            decompressor = zlib.decompressobj(-_MAX_WINDOW_BITS)
            if not self.no_context_takeover:
                self._decompressor = decompressor
        try:
            out = decompressor.decompress(data + _TAIL, self.max_size + 1)
        except zlib.error:
            self._decompressor = None
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "invalid compressed data") from None
        if len(out) > self.max_size:
            self._decompressor = None
            raise ProtocolError(CLOSE_TOO_BIG, "message too big")
        return out
