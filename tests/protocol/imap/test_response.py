"""Response serializer and modified UTF-7."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.commands import FetchAttr, Section
from mailmux.protocol.imap.mutf7 import decode_mailbox, encode_mailbox
from mailmux.protocol.imap.response import (
    Atom,
    Literal,
    continuation,
    encode_value,
    fetch_item_name,
    format_sequence_set,
    tagged,
    untagged,
    untagged_status,
)


def test_value_encoding_choices() -> None:
    assert encode_value(None) == b"NIL"
    assert encode_value(42) == b"42"
    assert encode_value(Atom("\\Seen")) == b"\\Seen"
    assert encode_value('say "hi" \\') == b'"say \\"hi\\" \\\\"'
    assert encode_value("caf\u00e9") == b"{5}\r\ncaf\xc3\xa9"
    assert encode_value(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert encode_value("x" * 1000).startswith(b"{1000}\r\n")
    assert encode_value(Literal(b"ab")) == b"{2}\r\nab"
    assert encode_value([1, [Atom("A"), None], "s"]) == b'(1 (A NIL) "s")'
    with pytest.raises(TypeError):
        encode_value(True)


def test_status_lines() -> None:
    assert untagged(3, Atom("EXISTS")) == b"* 3 EXISTS\r\n"
    assert untagged_status("OK", "hi", "UIDNEXT 4") == b"* OK [UIDNEXT 4] hi\r\n"
    assert tagged("a1", "NO", "bad\r\nthing", "TRYCREATE") == b"a1 NO [TRYCREATE] bad  thing\r\n"
    assert continuation() == b"+ \r\n"


def test_fetch_item_names() -> None:
    peek = FetchAttr("BODY[]", Section((1, 2), "HEADER.FIELDS", ("SUBJECT", "TO")), True, (0, 10))
    assert fetch_item_name(peek) == "BODY[1.2.HEADER.FIELDS (SUBJECT TO)]<0>"
    assert fetch_item_name(FetchAttr("BODY[]", Section())) == "BODY[]"
    assert fetch_item_name(FetchAttr("BODY[]", Section((3,), "MIME"))) == "BODY[3.MIME]"
    assert fetch_item_name(FetchAttr("ENVELOPE")) == "ENVELOPE"


def test_sequence_sets() -> None:
    assert format_sequence_set([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert format_sequence_set([7]) == "7"


def test_rfc3501_mutf7_example() -> None:
    assert decode_mailbox("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert encode_mailbox("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert encode_mailbox("a&b") == "a&-b" and decode_mailbox("a&-b") == "a&b"


@pytest.mark.parametrize("bad", ["&Jjo", "&AGE-", "caf\u00e9", "&!!-"])
def test_invalid_mutf7(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_mailbox(bad)


@given(st.text())
def test_mutf7_round_trip(name: str) -> None:
    encoded = encode_mailbox(name)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert decode_mailbox(encoded) == name


def test_binary_content_uses_literal8_only_with_a_nul() -> None:
    from mailmux.protocol.imap.response import Literal8

    assert encode_value(Literal8(b"ab\x00c")) == b"~{4}\r\nab\x00c"
    assert encode_value(Literal8(b"abc")) == b"{3}\r\nabc"
