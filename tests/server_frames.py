"""Client-side helpers for tests: build masked client frames, read the server's frames."""

from __future__ import annotations

import os
import struct


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One frame as a client sends it (masked unless ``mask`` is False)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def split_server_frame(data: bytes) -> tuple[tuple[bool, bool, int, bytes], bytes] | None:
    """The first complete server frame of ``data`` as ``((fin, rsv1, opcode, payload), rest)``; None if incomplete."""
    if len(data) < 2:
        return None
    n, offset = data[1] & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None
        n, offset = struct.unpack_from("!H", data, 2)[0], 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, offset = struct.unpack_from("!Q", data, 2)[0], 10
    if len(data) < offset + n:
        return None
    return (bool(data[0] & 0x80), bool(data[0] & 0x40), data[0] & 0x0F, data[offset : offset + n]), data[offset + n :]


def parse_server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split the bytes a server sent into ``(opcode, payload)`` frames and the incomplete tail."""
    frames = []
    while (split := split_server_frame(data)) is not None:
        (_, _, opcode, payload), data = split
        frames.append((opcode, payload))
    return frames, data


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
