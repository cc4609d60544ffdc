"""Address lists (groups, routes, comments), sections inside message/rfc822, address SEARCH."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmux.backend.message.addresses import parse_addresses
from mailmux.backend.message.envelope import envelope
from mailmux.backend.message.parsed import ParsedMessage
from mailmux.backend.message.search import SearchContext, matches
from mailmux.backend.message.sections import section_bytes
from mailmux.backend.store.interface import MessageMeta
from mailmux.protocol.imap.commands import SearchKey, Section

NIL4 = [None, None, None, None]


@pytest.mark.parametrize(("text", "expected"), [
    ("group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;",
     [[None, None, "group", None], [None, None, "g1", "d1.org"], [None, None, "g2", "d2.org"],
      NIL4, [None, None, "group2", None], [None, None, "g3", "d3.org"], NIL4]),
    ("group:;, group2: (foo) ;",
     [[None, None, "group", None], NIL4, [None, None, "group2", None], NIL4]),
    ("<@route:user@domain>", [[None, "@route", "user", "domain"]]),
    ("<@a,@b:u@h>", [[None, "@a,@b", "u", "h"]]),
    ("user@domain (Real Name)", [["Real Name", None, "user", "domain"]]),
    ("a@x (A), b@y (B)", [["A", None, "a", "x"], ["B", None, "b", "y"]]),
    ("<user-from (comment)@ (comment) domain.org>", [[None, None, "user-from", "domain.org"]]),
    ('"Doe, John" <j@x>', [["Doe, John", None, "j", "x"]]),
    ("", []),
])
def test_address_lists(text: str, expected: list[list[str | None]]) -> None:
    assert [a.as_list() for a in parse_addresses(text)] == expected


def test_address_parser_never_raises_on_junk() -> None:
    for junk in ["<<<@@@", "(unclosed", '"unclosed', ";;;:::,,,", "a:b:c;d;", "\\", "[x", "@:"]:
        parse_addresses(junk)


def test_envelope_keeps_groups_and_routes() -> None:
    msg = ParsedMessage.from_bytes(b"From: <@route:user@domain>\r\n"
                                   b"To: group: g1@d1.org;\r\n\r\nbody\r\n")
    env = envelope(msg)
    assert env[2] == [[None, "@route", "user", "domain"]]
    assert env[5] == [[None, None, "group", None], [None, None, "g1", "d1.org"], NIL4]


def _search(raw: bytes, key: SearchKey) -> bool:
    msg = ParsedMessage.from_bytes(raw)
    meta = MessageMeta(1, "g", frozenset(), 1, len(raw), datetime(2026, 1, 1, tzinfo=UTC))
    return matches(key, SearchContext(1, meta, lambda: msg))


def test_search_from_sees_through_comments_and_groups() -> None:
    commented = b"From: <user-from (comment)@ (comment) domain.org>\r\n\r\nx\r\n"
    assert _search(commented, SearchKey("FROM", ("user-from@domain.org",)))
    grouped = b"To: groupname: groupuser1@domain.org;\r\n\r\nx\r\n"
    assert _search(grouped, SearchKey("TO", ("groupname",)))
    assert _search(grouped, SearchKey("TO", ("groupuser1",)))
    assert not _search(grouped, SearchKey("TO", ("groupuser4",)))
    named = b"From: user-from@domain.org (RealFrom)\r\n\r\nx\r\n"
    assert _search(named, SearchKey("FROM", ("ealfro",)))


RFC822_IN_RFC822 = (
    b"From: user@domain.org\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: sub@domain.org\r\nSubject: submsg\r\n\r\nHello world\r\n"
)
DIGEST = (
    b"From: user@domain.org\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: sub@domain.org\r\nContent-Type: multipart/digest; boundary=\"foo\"\r\n\r\n"
    b"prologue\r\n\r\n--foo \r\n\r\nFrom: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n\r\n"
    b"--foo \r\nX-Mime: m2 header\r\n\r\nFrom: m2@example.com\r\nSubject: m2\r\n\r\nm2 body\r\n"
    b"\r\n--foo--\r\n"
)


@pytest.mark.parametrize(("raw", "part", "text", "expected"), [
    (RFC822_IN_RFC822, (1,), None,
     b"From: sub@domain.org\r\nSubject: submsg\r\n\r\nHello world\r\n"),
    (RFC822_IN_RFC822, (1, 1), None, b"Hello world\r\n"),
    (RFC822_IN_RFC822, (1,), "HEADER", b"From: sub@domain.org\r\nSubject: submsg\r\n\r\n"),
    (DIGEST, (1, 1), "MIME", b"\r\n"),
    (DIGEST, (1, 1), "HEADER", b"From: m1@example.com\r\nSubject: m1\r\n\r\n"),
    (DIGEST, (1, 2), "MIME", b"X-Mime: m2 header\r\n\r\n"),
    (DIGEST, (1, 2), "TEXT", b"m2 body\r\n"),
    (DIGEST, (1, 3), None, b""),
])
def test_sections_inside_message_rfc822(raw: bytes, part: tuple[int, ...], text: str | None,
                                        expected: bytes) -> None:
    msg = ParsedMessage.from_bytes(raw)
    assert section_bytes(msg, Section(part, text)) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab@<>(),;:"\\[] .x\t', max_size=80))
def test_address_parser_never_raises(text: str) -> None:
    for address in parse_addresses(text):
        address.searchable()
