"""Length-prefixed TCP framing of control messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.control.errors import ControlDecodeError
from mailmux.protocol.control.framing import FrameDecoder, frame


def test_frame_prefixes_big_endian_length() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"


@given(st.lists(st.binary(max_size=300), max_size=10), st.data())
def test_frames_survive_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    received: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.receive_data(stream[start:end])
        while (payload := decoder.next_frame()) is not None:
            received.append(payload)
    assert received == payloads
    assert decoder.buffered == 0


def test_partial_frame_needs_more_data() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(frame(b"hello")[:6])
    assert decoder.next_frame() is None
    assert decoder.buffered == 6


def test_oversized_length_is_a_decode_error() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.receive_data(b"\x00\x00\x00\x0b")
    with pytest.raises(ControlDecodeError) as info:
        decoder.next_frame()
    assert info.value.reason == "oversized"
