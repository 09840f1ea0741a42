"""A stream's tail across a restart: two processes publish to one history for a while.

While the old process drains, the new one may deliver an offset that skips
those the old one published (it learns of them from the store later). The tail
answers replays only with consecutive offsets, so it starts over there instead
of answering a replay with the wrong messages.
"""

from __future__ import annotations

import pytest

from asok_green.history.streams import Policy, Stream
from asok_green.protocol.envelopes import Since
from asok_green.protocol.outgoing import Outgoing

pytestmark = pytest.mark.quick


def test_an_offset_past_the_next_one_empties_the_tail_instead_of_leaving_a_hole():
    stream = Stream("/feed", Policy(200, None))
    stream.enter_epoch("e1", 0)
    for offset in (1, 2, 3):
        stream.last = offset
        stream.remember(offset, 0.0, Outgoing(1, b"m%d" % offset))
    assert [m.payload for m in stream.tail_since(Since("e1", 1), 0.0)] == [b"m2", b"m3"]
    stream.last = 7  # 4, 5 and 6 came from the other process and were not delivered here
    stream.remember(7, 0.0, Outgoing(1, b"m7"))
    assert stream.tail_since(Since("e1", 3), 0.0) is None  # read from the store, which has 4 to 7
    assert stream.tail_since(Since("e1", 5), 0.0) is None
    stream.last = 8
    stream.remember(8, 0.0, Outgoing(1, b"m8"))
    assert [m.payload for m in stream.tail_since(Since("e1", 7), 0.0)] == [b"m8"]
