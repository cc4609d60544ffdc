"""CommandFramer / ResponseFramer: literals, limits, and chunking independence."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailmux.protocol.imap.framing import (
    CommandBytes,
    CommandFramer,
    FramingError,
    LiteralContinue,
    NeedData,
    ResponseBytes,
    ResponseFramer,
)


def events(framer: CommandFramer, data: bytes) -> list[object]:
    framer.receive_data(data)
    out: list[object] = []
    while not isinstance(event := framer.next_event(), NeedData):
        out.append(event)
    return out


def test_plain_lines_and_partial_input() -> None:
    framer = CommandFramer()
    assert events(framer, b"a1 NOO") == []
    assert events(framer, b"P\r\na2 CAPABILITY\r\n") == [
        CommandBytes(b"a1 NOOP\r\n"), CommandBytes(b"a2 CAPABILITY\r\n")]


def test_synchronising_literal_asks_for_continuation() -> None:
    framer = CommandFramer()
    assert events(framer, b"a LOGIN {5}\r\n") == [LiteralContinue(5)]
    assert events(framer, b"alice {2}\r\n") == [LiteralContinue(2)]
    assert events(framer, b"pw\r\n") == [CommandBytes(b"a LOGIN {5}\r\nalice {2}\r\npw\r\n")]


def test_non_synchronising_and_binary_literals_need_no_continuation() -> None:
    body = b"x\r\n{3}\r\n\x00y"
    raw = b"a APPEND INBOX {%d+}\r\n%s ~{2+}\r\n\x00\x01\r\n" % (len(body), body)
    assert events(CommandFramer(), raw) == [CommandBytes(raw)]


def test_overlong_line_is_refused_with_its_tag_and_the_next_command_works() -> None:
    framer = CommandFramer(max_line=100)
    out = events(framer, b"t9 NOOP " + b"x" * 500 + b"\r\nt10 NOOP\r\n")
    assert out == [FramingError("t9", "line too long", "TOOBIG", False),
                   CommandBytes(b"t10 NOOP\r\n")]


def test_overlong_line_arriving_in_pieces_is_discarded_without_buffering() -> None:
    framer = CommandFramer(max_line=100)
    assert events(framer, b"t1 NOOP " + b"x" * 150) == []
    assert events(framer, b"y" * 10_000) == []
    assert len(framer._buffer) < 200
    assert events(framer, b"\r\nt2 NOOP\r\n") == [
        FramingError("t1", "line too long", "TOOBIG", False), CommandBytes(b"t2 NOOP\r\n")]


def test_literal_limits() -> None:
    framer = CommandFramer(max_literal=10)
    out = events(framer, b"a APPEND INBOX {11}\r\nb NOOP\r\n")
    assert out[0] == FramingError("a", "literal of 11 octets is too big", "TOOBIG", False)
    assert out[1] == CommandBytes(b"b NOOP\r\n")
    fatal = events(CommandFramer(max_literal=10), b"a APPEND INBOX {11+}\r\n01234567890\r\n")
    assert fatal == [FramingError("a", "literal of 11 octets is too big", "TOOBIG", True)]


def test_response_framer_splits_fetch_literals() -> None:
    framer = ResponseFramer()
    framer.receive_data(b"* 1 FETCH (BODY[] {4}\r\na\r\nb)\r\n+ go\r\nx1 OK done\r\n")
    out = []
    while not isinstance(event := framer.next_event(), NeedData):
        out.append(event)
    assert out == [ResponseBytes(b"* 1 FETCH (BODY[] {4}\r\na\r\nb)\r\n", "untagged", None),
                   ResponseBytes(b"+ go\r\n", "continuation", None),
                   ResponseBytes(b"x1 OK done\r\n", "tagged", "x1")]


COMMANDS = [
    b"a1 NOOP\r\n",
    b"a2 LOGIN {5+}\r\nalice {2+}\r\npw\r\n",
    b"a3 APPEND INBOX (\\Seen) {12+}\r\nSubject: x\r\n\r\n",
    b'a4 SEARCH SUBJECT "{3}"\r\n',
    b"a5 APPEND INBOX ~{3+}\r\n\x00\r\n\r\n",
]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=6), st.data())
def test_any_chunking_gives_the_same_commands(commands: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(commands)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = CommandFramer()
    got: list[object] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        got += events(framer, stream[previous:cut])
        previous = cut
    assert got == [CommandBytes(c) for c in commands]


def test_chained_literals_count_against_one_command_budget() -> None:
    framer = CommandFramer(max_line=1000, max_literal=100, max_command=250)
    out = events(framer, b"a1 NOOP {90+}\r\n" + b"x" * 90 + b" {90+}\r\n" + b"y" * 90
                 + b" {90+}\r\n")
    assert out == [FramingError("a1", "command is too big", "TOOBIG", True)]
    sync = CommandFramer(max_line=1000, max_literal=100, max_command=150)
    assert events(sync, b"a2 NOOP {90}\r\n") == [LiteralContinue(90)]
    assert events(sync, b"x" * 90 + b" {90}\r\n") == [
        FramingError("a2", "command is too big", "TOOBIG", False)]
    assert events(sync, b"a3 NOOP\r\n") == [CommandBytes(b"a3 NOOP\r\n")]
