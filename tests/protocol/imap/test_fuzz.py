"""Fuzz target: any bytes through the framer and the parser give a command or a protocol error
carrying the tag — never any other exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.framing import (
    CommandBytes,
    CommandFramer,
    FramingError,
    LiteralContinue,
    NeedData,
)
from mailmux.protocol.imap.parser import parse_command

SEEDS = [
    b"A1 LOGIN alice {3+}\r\npw!\r\n",
    b'A1 FETCH 1:*,3 (FLAGS BODY.PEEK[1.HEADER.FIELDS (SUBJECT)]<0.5>) (CHANGEDSINCE 3)\r\n',
    b'A1 SEARCH CHARSET UTF-8 OR (FROM "x" SINCE 1-Jan-2020) NOT UID 1:4\r\n',
    b"A1 STORE 1 (UNCHANGEDSINCE 4) +FLAGS.SILENT (\\Seen)\r\n",
    b'A1 APPEND INBOX (\\Seen) "01-Jan-2020 10:00:00 +0000" {5+}\r\nhello\r\n',
    b'A1 LIST (SPECIAL-USE) "" ("*" %) RETURN (CHILDREN)\r\n',
    b'A1 ID ("a" "b")\r\n', b"A1 UID EXPUNGE 1:*\r\n", b"A1 CREATE x (USE (\\Sent))\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(3, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(b' ()[]<>{}"\\*%+~:,.0123456789\r\n\x00\xffAZaz'))
        if action == "insert":
            data.insert(position, byte)
        elif action == "delete" and position < len(data):
            del data[position]
        elif position < len(data):
            data[position] = byte
    return bytes(data)


def _check(data: bytes) -> None:
    framer = CommandFramer(max_line=4096, max_literal=4096)
    framer.receive_data(data + b"\r\n")
    for _ in range(1000):
        event = framer.next_event()
        if isinstance(event, NeedData):
            return
        if isinstance(event, CommandBytes):
            try:
                parse_command(event.raw)
            except ParseError as exc:
                if event.raw.startswith(b"A1 "):
                    assert exc.tag == "A1", (event.raw, exc.message)
        else:
            assert isinstance(event, FramingError | LiteralContinue), event


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_commands_never_crash(data: bytes) -> None:
    _check(data)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    _check(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_parser_alone_on_tagged_garbage(data: bytes) -> None:
    try:
        parse_command(b"A1 " + data)
    except ParseError as exc:
        assert exc.tag == "A1"
