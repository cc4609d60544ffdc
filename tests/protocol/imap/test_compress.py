"""COMPRESS=DEFLATE streams (RFC 4978): round trips, bounded expansion, corrupt input."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.compress import CompressError, Deflater, Inflater
from mailmux.protocol.imap.framing import CommandBytes, CommandFramer, FramingError, NeedData


def _drain(inflater: Inflater) -> list[bytes]:
    pieces = []
    while inflater.pending:
        piece = inflater.read()
        if not piece:
            break
        pieces.append(piece)
    return pieces


@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(1, 5000),
       st.integers(16, 4096))
def test_round_trip_in_any_chunking(messages: list[bytes], chunk: int, limit: int) -> None:
    deflater, inflater = Deflater(), Inflater(max_output=limit)
    wire = b"".join(deflater.compress(m) for m in messages)
    out = []
    for start in range(0, len(wire), chunk):
        inflater.feed(wire[start:start + chunk])
        pieces = _drain(inflater)
        assert all(len(p) <= limit for p in pieces)
        out += pieces
    assert b"".join(out) == b"".join(messages)


def test_each_flush_is_decodable_on_its_own() -> None:
    """A response leaves at once: the peer can decode it before anything else is sent."""
    deflater, inflater = Deflater(), Inflater()
    inflater.feed(deflater.compress(b"* OK one\r\n"))
    assert b"".join(_drain(inflater)) == b"* OK one\r\n"


def test_a_bomb_expands_a_bounded_piece_at_a_time_into_the_framer_caps() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"t1 NOOP " + b"a" * 50_000_000 + b"\r\nt2 NOOP\r\n")
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    inflater = Inflater(max_output=64 * 1024)
    framer = CommandFramer(max_line=8192, max_literal=1024)
    inflater.feed(bomb)
    events = []
    biggest = 0
    while inflater.pending:
        piece = inflater.read()
        if not piece:
            break
        framer.receive_data(piece)
        while not isinstance(event := framer.next_event(), NeedData):
            events.append(event)
        biggest = max(biggest, len(framer._buffer))  # the cap under test
    assert biggest <= 8192 + 64 * 1024
    assert events[0] == FramingError("t1", "line too long", "TOOBIG", False)
    assert events[1:] == [CommandBytes(b"t2 NOOP\r\n")]


def test_corrupt_stream_is_an_error() -> None:
    inflater = Inflater()
    inflater.feed(b"\xff\xff\xff\xff")
    with pytest.raises(CompressError):
        inflater.read()


def test_commands_frame_after_inflating() -> None:
    deflater, inflater = Deflater(), Inflater(max_output=5)
    inflater.feed(deflater.compress(b"a NOOP\r\nb NOOP\r\n"))
    framer = CommandFramer()
    got = []
    for piece in _drain(inflater):
        framer.receive_data(piece)
        while isinstance(event := framer.next_event(), CommandBytes):
            got.append(event.raw)
    assert got == [b"a NOOP\r\n", b"b NOOP\r\n"]
