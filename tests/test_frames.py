"""Tests for asok_green.protocol.frames: the sans-I/O RFC 6455 codec."""

import struct

import pytest

from asok_green.protocol.frames import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Message,
    MessageReader,
    Ping,
    Pong,
    ProtocolError,
    accept_key,
    control_frames_length,
    encode_close,
    encode_frame,
    is_valid_client_key,
    is_valid_close_code,
)
from tests.server_frames import split_server_frame

pytestmark = pytest.mark.quick

MASK = b"\x37\xfa\x21\x3d"


def client_frame(
    opcode,
    payload=b"",
    *,
    fin=True,
    rsv=0,
    masked=True,
    mask=MASK,
    length=None,
    length_form=None,
):
    """Build a client frame, masked unless told otherwise.

    ``length`` overrides the announced payload length; ``length_form`` forces
    the 7-bit, 16-bit or 64-bit encoding ("short", "medium", "long").
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload) if length is None else length
    if length_form is None:
        length_form = "short" if n < 126 else "medium" if n < 65536 else "long"
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if length_form == "short":
        header = bytes([b0, mask_bit | n])
    elif length_form == "medium":
        header = bytes([b0, mask_bit | 126]) + struct.pack("!H", n)
    else:
        header = bytes([b0, mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return header + payload
    # A plain per-byte loop, independent of the implementation under test.
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return header + mask + body


def parse_server_frame(data):
    """Decode one unmasked server frame: (fin, rsv1, opcode, payload)."""
    assert not data[1] & 0x80, "server frames must not be masked"
    frame, rest = split_server_frame(data)
    assert rest == b""
    return frame


def feed_error(data, **kwargs):
    reader = MessageReader(**kwargs)
    with pytest.raises(ProtocolError) as info:
        reader.feed(data)
    return info.value


# Rules the reader enforces.


def test_unmasked_frame_is_protocol_error():
    error = feed_error(client_frame(OP_TEXT, "hi", masked=False))
    assert error.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("rsv", [0b100, 0b010, 0b001, 0b111])
def test_rsv_bit_set_is_protocol_error(rsv):
    error = feed_error(client_frame(OP_BINARY, b"x", rsv=rsv))
    assert error.code == CLOSE_PROTOCOL_ERROR


def test_rsv1_allowed_marks_message_compressed():
    reader = MessageReader(allow_rsv1=True)
    first = client_frame(OP_TEXT, b"\xff\x00", rsv=0b100, fin=False)
    events = reader.feed(first + client_frame(OP_CONT, b"\xfe"))
    # Compressed payloads are handed over raw, without UTF-8 validation.
    assert events == [Message(OP_TEXT, b"\xff\x00\xfe", compressed=True)]
    assert reader.feed(client_frame(OP_BINARY, b"x")) == [Message(OP_BINARY, b"x")]
    single = client_frame(OP_BINARY, b"\x00", rsv=0b100)
    assert reader.feed(single) == [Message(OP_BINARY, b"\x00", compressed=True)]


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(OP_BINARY, b"x", rsv=0b010),
        client_frame(OP_PING, b"x", rsv=0b100),
        client_frame(OP_BINARY, b"x", fin=False) + client_frame(OP_CONT, b"y", rsv=0b100),
    ],
    ids=["rsv2", "rsv1-on-control", "rsv1-on-continuation"],
)
def test_rsv_bits_still_rejected_when_rsv1_allowed(frame):
    assert feed_error(frame, allow_rsv1=True).code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcode_is_protocol_error(opcode):
    assert feed_error(client_frame(opcode, b"")).code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frame_payload_over_125_is_protocol_error(opcode):
    payload = b"\x03\xe8" + b"a" * 124  # 126 bytes, a valid close payload otherwise
    assert feed_error(client_frame(opcode, payload)).code == CLOSE_PROTOCOL_ERROR


def test_control_frame_payload_of_125_is_accepted():
    assert MessageReader().feed(client_frame(OP_PING, b"p" * 125)) == [Ping(b"p" * 125)]


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frame_not_fin_is_protocol_error(opcode):
    error = feed_error(client_frame(opcode, b"", fin=False))
    assert error.code == CLOSE_PROTOCOL_ERROR


def test_continuation_without_message_is_protocol_error():
    error = feed_error(client_frame(OP_CONT, b"x"))
    assert error.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_data_frame_during_fragmented_message_is_protocol_error(opcode):
    data = client_frame(OP_TEXT, "a", fin=False) + client_frame(opcode, "b")
    assert feed_error(data).code == CLOSE_PROTOCOL_ERROR


def test_control_frames_between_fragments_are_returned_immediately():
    reader = MessageReader()
    first = reader.feed(client_frame(OP_TEXT, "Hel", fin=False) + client_frame(OP_PING, b"1"))
    assert first == [Ping(b"1")]
    second = reader.feed(client_frame(OP_CONT, "lo", fin=False) + client_frame(OP_PONG, b"2"))
    assert second == [Pong(b"2")]
    assert reader.feed(client_frame(OP_CONT, "!")) == [Message(OP_TEXT, "Hello!")]


def test_64bit_length_with_top_bit_is_protocol_error():
    header = client_frame(OP_BINARY, length=1 << 63, length_form="long")
    assert feed_error(header).code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("form", ["medium", "long"])
def test_non_minimal_length_encoding_is_accepted(form):
    frame = client_frame(OP_BINARY, b"abc", length_form=form)
    assert MessageReader().feed(frame) == [Message(OP_BINARY, b"abc")]


def test_message_over_max_size_is_detected_from_header():
    # Only the header of a 2 GB frame: refused before any payload arrives.
    header = client_frame(OP_BINARY, length=2 << 30)
    assert feed_error(header).code == CLOSE_TOO_BIG


def test_fragmented_message_over_max_size_is_too_big():
    reader = MessageReader(max_message_size=30)
    # 6 payload bytes plus a 6-byte header: 12 counted.
    assert reader.feed(client_frame(OP_BINARY, b"x" * 6, fin=False)) == []
    with pytest.raises(ProtocolError) as info:
        # Header of a 13-byte fragment: 12 + 6 + 13 > 30, refused without its payload.
        reader.feed(client_frame(OP_CONT, length=13))
    assert info.value.code == CLOSE_TOO_BIG


def test_message_of_exactly_max_size_is_accepted():
    # A fragmented message counts its payload and each fragment's header: 6 + 6 + 4 + 6.
    reader = MessageReader(max_message_size=22)
    frames = client_frame(OP_TEXT, "x" * 6, fin=False) + client_frame(OP_PING, b"p" * 20)
    frames += client_frame(OP_CONT, "y" * 4)
    assert reader.feed(frames) == [Ping(b"p" * 20), Message(OP_TEXT, "xxxxxxyyyy")]
    # The size count starts again with each message; an unfragmented one counts its payload only.
    assert reader.feed(client_frame(OP_BINARY, b"z" * 22)) == [Message(OP_BINARY, b"z" * 22)]


def test_one_byte_over_with_fragment_headers_is_too_big():
    reader = MessageReader(max_message_size=21)
    frames = client_frame(OP_TEXT, "x" * 6, fin=False) + client_frame(OP_CONT, "y" * 4)
    with pytest.raises(ProtocolError) as info:
        reader.feed(frames)
    assert info.value.code == CLOSE_TOO_BIG


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_empty_continuation_frames_end_in_too_big(opcode):
    reader = MessageReader(max_message_size=1000)
    assert reader.feed(client_frame(opcode, b"a", fin=False)) == []
    empty = client_frame(OP_CONT, b"", fin=False)
    with pytest.raises(ProtocolError) as info:
        for _ in range(1000):
            reader.feed(empty)
    assert info.value.code == CLOSE_TOO_BIG
    # Each empty fragment is charged its 6-byte header: the limit comes after about 1000 / 6 of them.
    assert reader.done


def test_fragments_are_kept_as_their_bytes_not_one_object_each():
    reader = MessageReader(max_message_size=1 << 20)
    reader.feed(client_frame(OP_BINARY, b"a", fin=False))
    for _ in range(10_000):
        reader.feed(client_frame(OP_CONT, b"b", fin=False))
    assert len(reader._payload) == 10_001
    assert reader.feed(client_frame(OP_CONT, b"c")) == [Message(OP_BINARY, b"a" + b"b" * 10_000 + b"c")]


def test_fragmented_text_is_checked_per_fragment_and_joined():
    reader = MessageReader()
    euro = "€".encode()
    frames = client_frame(OP_TEXT, b"x" + euro[:1], fin=False) + client_frame(OP_CONT, euro[1:] + b"y")
    assert reader.feed(frames) == [Message(OP_TEXT, "x€y")]
    assert feed_error(client_frame(OP_TEXT, b"ok", fin=False) + client_frame(OP_CONT, b"\xff")).code == (
        CLOSE_INVALID_DATA
    )


def test_a_stopped_reader_ignores_its_input():
    reader = MessageReader()
    reader.stop()
    assert reader.done
    assert reader.feed(client_frame(OP_TEXT, b"hello")) == []


def test_invalid_utf8_text_is_invalid_data():
    error = feed_error(client_frame(OP_TEXT, b"caf\xc3("))
    assert error.code == CLOSE_INVALID_DATA


def test_invalid_utf8_fails_fast_on_its_fragment():
    reader = MessageReader()
    with pytest.raises(ProtocolError) as info:
        # Not final: the message could not be complete, yet it must fail now.
        reader.feed(client_frame(OP_TEXT, b"ok \xed\xa0\x80", fin=False))
    assert info.value.code == CLOSE_INVALID_DATA


def test_text_ending_mid_character_fails_at_final_fragment():
    reader = MessageReader()
    assert reader.feed(client_frame(OP_TEXT, b"ok \xe2\x82", fin=False)) == []
    with pytest.raises(ProtocolError) as info:
        reader.feed(client_frame(OP_CONT, b""))
    assert info.value.code == CLOSE_INVALID_DATA


def test_text_split_mid_character_across_fragments_is_valid():
    euro = "€".encode()  # three bytes
    frames = client_frame(OP_TEXT, b"a" + euro[:1], fin=False)
    frames += client_frame(OP_CONT, euro[1:2], fin=False)
    frames += client_frame(OP_CONT, euro[2:] + b"b")
    assert MessageReader().feed(frames) == [Message(OP_TEXT, "a€b")]


def test_invalid_utf8_fails_fast_inside_a_frame_still_arriving():
    frame = client_frame(OP_TEXT, "κόσμε".encode() + b"\xed\xa0\x80" + b"tail" * 100)
    reader = MessageReader()
    assert reader.feed(frame[:12]) == []  # header and valid text so far
    with pytest.raises(ProtocolError) as info:
        # The frame is far from complete, but it can no longer be valid.
        reader.feed(frame[12:30])
    assert info.value.code == CLOSE_INVALID_DATA


def test_text_frame_arriving_in_pieces_is_checked_and_delivered_once():
    text = "añb€c" * 50
    frame = client_frame(OP_TEXT, text)
    reader = MessageReader()
    events = []
    for i in range(0, len(frame), 7):  # pieces that split characters and the mask cycle
        events += reader.feed(frame[i : i + 7])
    assert events == [Message(OP_TEXT, text)]


def test_continuation_arriving_in_pieces_carries_a_split_character():
    euro = "€".encode()
    reader = MessageReader()
    assert reader.feed(client_frame(OP_TEXT, b"a" + euro[:2], fin=False)) == []
    last = client_frame(OP_CONT, euro[2:] + b"b" * 40)
    assert reader.feed(last[:9]) == []  # header, mask and the end of the euro sign
    assert reader.feed(last[9:]) == [Message(OP_TEXT, "a€" + "b" * 40)]


def test_invalid_continuation_fails_fast_inside_its_frame():
    reader = MessageReader()
    assert reader.feed(client_frame(OP_TEXT, b"ok", fin=False)) == []
    last = client_frame(OP_CONT, b"\xc0\xaf" + b"x" * 200)
    with pytest.raises(ProtocolError) as info:
        reader.feed(last[:10])
    assert info.value.code == CLOSE_INVALID_DATA


def test_compressed_text_arriving_in_pieces_is_not_checked_as_utf8():
    reader = MessageReader(allow_rsv1=True)
    frame = client_frame(OP_TEXT, b"\xff" * 50, rsv=0b100)
    assert reader.feed(frame[:20]) == []
    assert reader.feed(frame[20:]) == [Message(OP_TEXT, b"\xff" * 50, compressed=True)]


def test_events_before_a_protocol_error_are_kept_on_the_error():
    data = client_frame(OP_TEXT, "first") + client_frame(OP_PING, b"p")
    data += client_frame(OP_TEXT, "bad", rsv=0b010) + client_frame(OP_TEXT, "never")
    error = feed_error(data)
    assert error.code == CLOSE_PROTOCOL_ERROR
    assert error.events == [Message(OP_TEXT, "first"), Ping(b"p")]


def test_close_payload_of_one_byte_is_protocol_error():
    assert feed_error(client_frame(OP_CLOSE, b"\x03")).code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_with_invalid_code_is_protocol_error(code):
    error = feed_error(client_frame(OP_CLOSE, struct.pack("!H", code)))
    assert error.code == CLOSE_PROTOCOL_ERROR


def test_close_reason_not_utf8_is_invalid_data():
    error = feed_error(client_frame(OP_CLOSE, b"\x03\xe8bye \xff"))
    assert error.code == CLOSE_INVALID_DATA


def test_empty_close_has_no_code():
    assert MessageReader().feed(client_frame(OP_CLOSE)) == [Close(None, "")]


def test_close_with_code_and_reason():
    frame = client_frame(OP_CLOSE, encode_close(4000, "bientôt"))
    assert MessageReader().feed(frame) == [Close(4000, "bientôt")]


def test_data_after_close_is_ignored():
    reader = MessageReader()
    data = client_frame(OP_TEXT, "a") + client_frame(OP_CLOSE, b"\x03\xe8")
    data += client_frame(OP_TEXT, "b")
    assert reader.feed(data) == [Message(OP_TEXT, "a"), Close(1000, "")]
    assert reader.feed(client_frame(OP_TEXT, "c")) == []
    assert reader.feed(b"garbage that would be a protocol error") == []


def test_reader_is_finished_after_protocol_error():
    reader = MessageReader()
    with pytest.raises(ProtocolError):
        reader.feed(client_frame(OP_TEXT, "a", masked=False))
    assert reader.feed(client_frame(OP_TEXT, "b")) == []


# Buffering.


@pytest.mark.parametrize("n", [0, 1, 2, 3, 125, 126, 65535, 65536])
def test_binary_round_trip(n):
    payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    assert MessageReader().feed(client_frame(OP_BINARY, payload)) == [Message(OP_BINARY, payload)]
    assert parse_server_frame(encode_frame(OP_BINARY, payload)) == (
        True,
        False,
        OP_BINARY,
        payload,
    )


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_text_round_trip(n):
    text = "é" * (n // 2) + "x" * (n % 2)  # n UTF-8 bytes
    assert MessageReader().feed(client_frame(OP_TEXT, text)) == [Message(OP_TEXT, text)]
    frame = encode_frame(OP_TEXT, text.encode())
    assert parse_server_frame(frame) == (True, False, OP_TEXT, text.encode())


def test_message_split_byte_by_byte():
    stream = client_frame(OP_TEXT, "hé", fin=False) + client_frame(OP_PING, b"p")
    stream += client_frame(OP_CONT, "llo " * 40)
    stream += client_frame(OP_BINARY, bytes(300), mask=b"\x01\x02\x03\x04")
    stream += client_frame(OP_CLOSE, b"\x03\xe9")
    reader = MessageReader()
    events = []
    for i in range(len(stream)):
        events += reader.feed(stream[i : i + 1])
    assert events == [
        Ping(b"p"),
        Message(OP_TEXT, "hé" + "llo " * 40),
        Message(OP_BINARY, bytes(300)),
        Close(1001, ""),
    ]


def test_large_frame_in_pieces_completes_once():
    payload = bytes(range(256)) * 1024
    frame = client_frame(OP_BINARY, payload)
    reader = MessageReader()
    for i in range(0, len(frame) - 1000, 1000):
        assert reader.feed(frame[i : i + 1000]) == []
    assert reader.feed(frame[i + 1000 :]) == [Message(OP_BINARY, payload)]


def test_tail_of_next_frame_is_kept():
    first, second = client_frame(OP_BINARY, b"one"), client_frame(OP_BINARY, b"two")
    reader = MessageReader()
    assert reader.feed(first + second[:3]) == [Message(OP_BINARY, b"one")]
    assert reader.feed(second[3:]) == [Message(OP_BINARY, b"two")]


# Encoding.


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_encode_frame_header_forms(n, header):
    payload = b"\xaa" * n
    assert encode_frame(OP_BINARY, payload) == header + payload


def test_encode_frame_fin_and_rsv1_bits():
    assert encode_frame(OP_TEXT, b"a", fin=False) == b"\x01\x01a"
    assert encode_frame(OP_CONT, b"a", rsv1=True) == b"\xc0\x01a"
    assert encode_frame(OP_PONG, b"") == b"\x8a\x00"


def test_encode_frame_rejects_invalid_control_frame():
    with pytest.raises(ValueError):
        encode_frame(OP_PING, b"x" * 126)
    with pytest.raises(ValueError):
        encode_frame(OP_CLOSE, b"", fin=False)


def test_encode_close():
    assert encode_close(1000) == b"\x03\xe8"
    assert encode_close(1001, "bye") == b"\x03\xe9bye"


def test_encode_close_truncates_at_character_boundary():
    reason = "a" + "€" * 60  # 181 bytes; byte 123 falls inside a "€"
    payload = encode_close(1000, reason)
    assert payload[:2] == b"\x03\xe8"
    assert len(payload) == 2 + 1 + 3 * 40  # 41 characters fit, the 42nd is cut
    assert payload[2:].decode("utf-8") == "a" + "€" * 40


def test_encode_close_keeps_reason_of_123_bytes():
    assert encode_close(1000, "r" * 123) == b"\x03\xe8" + b"r" * 123
    assert len(encode_close(1000, "r" * 124)) == 125


# Close codes and handshake helpers.


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1014, 3000, 4999])
def test_valid_close_codes(code):
    assert is_valid_close_code(code)


@pytest.mark.parametrize("code", [-1, 0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_codes(code):
    assert not is_valid_close_code(code)


def test_accept_key_rfc_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("dGhlIHNhbXBsZSBub25jZQ==", True),
        ("AAAAAAAAAAAAAAAAAAAAAA==", True),
        ("dGhlIHNhbXBsZSBub25jZQ", False),  # missing padding
        ("dGhlIHNhbXBsZSBub25jZSE=", False),  # 17 bytes
        ("dGhlIHNhbXBsZSBub25j", False),  # 15 bytes
        ("dGhlIHNhbXBsZSBub25j!Q==", False),  # not base64
        ("dGhlIHNhbXBs ZSBub25jZQ==", False),  # 16 bytes once junk is dropped
        ("dGhlIHNhbXBsZSBub25jZQ==\u00e9", False),  # not ASCII
        ("", False),
    ],
)
def test_is_valid_client_key(key, valid):
    assert is_valid_client_key(key) is valid


# -- control_frames_length: what the read watcher may take without a reader --------


def test_control_frames_length_counts_whole_pings_and_pongs():
    frames = client_frame(OP_PONG, b"a") + client_frame(OP_PING, b"bc") + client_frame(OP_PONG, b"x" * 125)
    assert control_frames_length(frames) == len(frames)
    assert control_frames_length(b"") == 0


def test_control_frames_length_stops_at_anything_a_reader_must_see():
    pong = client_frame(OP_PONG, b"a")
    assert control_frames_length(pong + client_frame(OP_TEXT, b"hi")) == len(pong)
    assert control_frames_length(pong + client_frame(OP_CLOSE, b"\x03\xe8")) == len(pong)
    assert control_frames_length(pong + client_frame(OP_PONG, b"abc")[:-1]) == len(pong)  # incomplete
    assert control_frames_length(client_frame(OP_PONG, b"a", masked=False)) == 0
    assert control_frames_length(client_frame(OP_PONG, b"a", rsv=4)) == 0
    assert control_frames_length(client_frame(OP_PONG, b"a", fin=False)) == 0


def test_control_frames_length_without_pings_stops_at_a_ping():
    pong, ping = client_frame(OP_PONG, b"a"), client_frame(OP_PING, b"b")
    assert control_frames_length(pong + ping, pings=False) == len(pong)
    assert control_frames_length(pong + ping, pings=True) == len(pong + ping)


def test_a_reader_at_rest_holds_nothing():
    reader = MessageReader()
    assert reader.at_rest
    text = client_frame(OP_TEXT, b"hello")
    reader.feed(text[:3])
    assert not reader.at_rest  # a frame begun
    reader.feed(text[3:])
    assert reader.at_rest
    reader.feed(client_frame(OP_TEXT, b"he", fin=False))
    assert not reader.at_rest  # a fragmented message under way
    reader.feed(client_frame(OP_CONT, b"llo"))
    assert reader.at_rest
    reader.stop()
    assert not reader.at_rest
