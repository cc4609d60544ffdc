"""CATENATE (RFC 4469) grammar and the IMAP URLs (RFC 5092) it takes."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.commands import Append, CatenatePart, Section
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.imapurl import (
    MAX_URL,
    ImapUrl,
    UrlError,
    apply_partial,
    parse_imap_url,
    section_of,
)
from mailmux.protocol.imap.parser import MAX_CATENATE_PARTS, parse_command


def test_catenate_with_multiappend() -> None:
    raw = (b'a APPEND box (\\Seen) CATENATE (TEXT {3}\r\nabc URL "/box/;uid=1/;section=header"'
           b' TEXT ~{1}\r\n\x00) {2}\r\nxy CATENATE (URL /box/;UID=2)\r\n')
    parsed = parse_command(raw).args
    assert isinstance(parsed, Append)
    assert parsed.flags == ("\\Seen",) and parsed.message == b""
    assert parsed.more == (((), None, b"xy", False), ((), None, b"", False))
    assert parsed.catenate == (
        (CatenatePart(text=b"abc"), CatenatePart(url="/box/;uid=1/;section=header"),
         CatenatePart(text=b"\x00")),
        None,
        (CatenatePart(url="/box/;UID=2"),))


def test_plain_append_has_no_catenate() -> None:
    parsed = parse_command(b"a APPEND box {2}\r\nxy\r\n").args
    assert isinstance(parsed, Append) and parsed.catenate == ()


@pytest.mark.parametrize("raw", [
    b"a APPEND box CATENATE ()\r\n",
    b"a APPEND box CATENATE (FOO {1}\r\nx)\r\n",
    b'a APPEND box CATENATE (TEXT "quoted is no literal")\r\n',
    b"a APPEND box CATENATE (URL /x/;uid=1\r\n",
])
def test_malformed_catenate_is_bad(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert (info.value.tag, info.value.status) == ("a", "BAD")


def test_catenate_part_count_is_bounded() -> None:
    parts = b" ".join([b"URL /x/;uid=1"] * (MAX_CATENATE_PARTS + 1))
    with pytest.raises(ParseError) as info:
        parse_command(b"a APPEND box CATENATE (" + parts + b")\r\n")
    assert info.value.code == "LIMIT"


def test_url_forms() -> None:
    assert parse_imap_url("/INBOX;UIDVALIDITY=5/;UID=20/;SECTION=1.2.MIME/;PARTIAL=0.1024") == \
        ImapUrl(b"INBOX", 20, 5, b"1.2.MIME", (0, 1024))
    assert parse_imap_url("imap://fred@example.test/a%20b/;uid=3") == ImapUrl(
        b"a b", 3, user="fred")
    assert parse_imap_url("/x/;uid=1/;partial=7") == ImapUrl(b"x", 1, partial=(7, None))
    url = parse_imap_url("/x/;uid=1/;section=HEADER.FIELDS%20(FROM%20TO)")
    assert section_of(url) == Section((), "HEADER.FIELDS", ("FROM", "TO"))


@pytest.mark.parametrize("url", [
    "x/;uid=1", "/;uid=1", "/x", "/x/;uid=0", "/x/;uid=1/;section=1/;uid=2",
    "/x/;section=1/;uid=1", "/x;foo=1/;uid=1", "/x/;uid=1/;urlauth=anonymous", "/x%zz/;uid=1",
    "/x/;uid=1/;partial=1.0", "/x/;uid=99999999999", "/x y/;uid=1", "/x/;uid=1?all",
    "/" + "a" * MAX_URL + "/;uid=1",
])
def test_urls_catenate_cannot_use(url: str) -> None:
    with pytest.raises(UrlError):
        section_of(parse_imap_url(url))


def test_invalid_section_is_a_url_error() -> None:
    with pytest.raises(UrlError):
        section_of(parse_imap_url("/x/;uid=1/;section=BOGUS"))


def test_partial_beyond_the_end_is_empty() -> None:
    assert apply_partial(b"abc", (100000, 1)) == b""
    assert apply_partial(b"abcdef", (2, 3)) == b"cde"


_MAILBOX = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF), min_size=1,
                   max_size=20)


@given(_MAILBOX, st.integers(1, 2**32 - 1), st.one_of(st.none(), st.integers(1, 2**32 - 1)),
       st.one_of(st.none(), st.sampled_from(["HEADER", "TEXT", "1", "1.2.MIME", "2.HEADER"])),
       st.one_of(st.none(), st.tuples(st.integers(0, 10**9), st.integers(1, 10**9))))
def test_url_round_trip(mailbox: str, uid: int, uidvalidity: int | None, section: str | None,
                        partial: tuple[int, int] | None) -> None:
    """Any URL built by the RFC 5092 rules parses back to the values it was built from."""
    text = "/" + quote(mailbox.encode(), safe="")
    if uidvalidity is not None:
        text += f";UIDVALIDITY={uidvalidity}"
    text += f"/;UID={uid}"
    if section is not None:
        text += f"/;SECTION={section}"
    if partial is not None:
        text += f"/;PARTIAL={partial[0]}.{partial[1]}"
    url = parse_imap_url(text)
    assert url == ImapUrl(mailbox.encode(), uid, uidvalidity,
                          section.encode() if section else None, partial)
