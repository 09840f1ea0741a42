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


def parse_server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split the bytes a server sent into ``(opcode, payload)`` frames and the incomplete tail."""
    frames = []
    while len(data) >= 2:
        opcode = data[0] & 0x0F
        n = data[1] & 0x7F
        offset = 2
        if n == 126:
            if len(data) < 4:
                break
            n = struct.unpack("!H", data[2:4])[0]
            offset = 4
        elif n == 127:
            if len(data) < 10:
                break
            n = struct.unpack("!Q", data[2:10])[0]
            offset = 10
        if len(data) < offset + n:
            break
        frames.append((opcode, data[offset : offset + n]))
        data = data[offset + n :]
    return frames, data


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
