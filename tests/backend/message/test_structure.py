"""MIME structure, ENVELOPE, BODYSTRUCTURE, sections and SEARCH over hand-checked messages."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from mailmux.backend.message.bodystructure import bodystructure
from mailmux.backend.message.envelope import envelope
from mailmux.backend.message.parsed import ParsedMessage, Part
from mailmux.backend.message.search import SearchContext, matches
from mailmux.backend.message.sections import section_bytes
from mailmux.backend.store.interface import MessageMeta
from mailmux.protocol.imap.commands import SearchKey, Section, SeqRange, SequenceSet
from mailmux.protocol.imap.response import encode_value

SIMPLE = b"Subject: hi\r\nFrom: a@example.test\r\n\r\nline one\r\nline two\r\n"

NESTED = (
    b"From: \"Bob B.\" <bob@example.test>\r\n"
    b"To: team: alice@example.test, carol@example.test;\r\n"
    b"Subject: =?iso-8859-1?q?r=E9sum=E9?=\r\n"
    b"Date: Mon, 23 Nov 2026 09:00:00 +0100\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; boundary=inner\r\n"
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>hi</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--outer\r\n"
    b"Content-Type: image/png; name=dot.png\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"dot.png\"\r\n"
    b"\r\n"
    b"iVBORw0KGgo=\r\n"
    b"--outer--\r\n"
    b"epilogue\r\n"
)


def parse(raw: bytes) -> Part:
    return ParsedMessage.from_bytes(raw)


def test_simple_message_structure() -> None:
    msg = parse(SIMPLE)
    assert encode_value(bodystructure(msg, extensible=False)) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 20 2)')
    assert encode_value(bodystructure(msg, extensible=True)) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 20 2 NIL NIL NIL NIL)')


def test_lf_only_and_missing_separator() -> None:
    lf = parse(b"Subject: x\n\nbody\n")
    assert lf.header == b"Subject: x\n\n" and lf.body == b"body\n" and lf.lines == 1
    headless = parse(b"Subject: only headers\r\n")
    assert headless.body == b"" and headless.size == 0


def test_nested_structure_sizes_and_lines() -> None:
    msg = parse(NESTED)
    assert encode_value(bodystructure(msg, extensible=False)) == (
        b'((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 15 1)'
        b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 9 1) "ALTERNATIVE")'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 28 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 1) 3)'
        b'("IMAGE" "PNG" ("NAME" "dot.png") NIL NIL "BASE64" 12) "MIXED")'
    )
    extended = bodystructure(msg, extensible=True)
    image = extended[0][2]
    assert isinstance(image, list) and image[-3] == ["ATTACHMENT", ["FILENAME", "dot.png"]]
    assert extended[2] == ["BOUNDARY", "outer"]


def test_missing_closing_boundary_keeps_the_last_part() -> None:
    msg = parse(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                b"--b\r\n\r\none\r\n--b\r\n\r\ntwo")
    assert [c.body for c in msg.children] == [b"one", b"two"]


def test_envelope_with_group_and_display_names() -> None:
    env = envelope(parse(NESTED))
    assert env[0] == "Mon, 23 Nov 2026 09:00:00 +0100"
    assert env[1] == "=?iso-8859-1?q?r=E9sum=E9?="  # encoded words stay encoded
    assert env[2] == [["Bob B.", None, "bob", "example.test"]]
    assert env[3] == env[4] == env[2]  # sender and reply-to default to from
    assert env[5] == [[None, None, "team", None], [None, None, "alice", "example.test"],
                      [None, None, "carol", "example.test"], [None, None, None, None]]
    assert env[6] is None and env[9] is None


def test_sections() -> None:
    msg = parse(NESTED)
    assert section_bytes(msg, Section()) == NESTED
    assert section_bytes(msg, Section((1, 1))) == b"Gr=C3=BC=C3=9Fe"
    assert section_bytes(msg, Section((1, 2), "MIME")) == b"Content-Type: text/html\r\n\r\n"
    assert section_bytes(msg, Section((2,))) == b"Subject: inner\r\n\r\ninner body"
    assert section_bytes(msg, Section((2,), "HEADER")) == b"Subject: inner\r\n\r\n"
    assert section_bytes(msg, Section((2,), "TEXT")) == b"inner body"
    assert section_bytes(msg, Section((2, 1))) == b"inner body"
    assert section_bytes(msg, Section((), "HEADER.FIELDS", ("SUBJECT", "TO"))) == (
        b"To: team: alice@example.test, carol@example.test;\r\n"
        b"Subject: =?iso-8859-1?q?r=E9sum=E9?=\r\n\r\n")
    not_fields = section_bytes(msg, Section((), "HEADER.FIELDS.NOT", ("CONTENT-TYPE", "DATE")))
    assert b"Content-Type" not in not_fields and b"From:" in not_fields
    assert section_bytes(msg, Section((9,))) == b""
    simple = parse(SIMPLE)
    assert section_bytes(simple, Section((1,))) == b"line one\r\nline two\r\n"


def _ctx(
    raw: bytes, flags: set[str], seq: int = 1, uid: int = 10, size: int = 100
) -> SearchContext:
    meta = MessageMeta(uid, "g", frozenset(flags), 5, size, datetime(2026, 11, 24, 12, tzinfo=UTC))
    msg = parse(raw)
    return SearchContext(seq, meta, lambda: msg, largest_seq=3, largest_uid=12)


def key(name: str, *args: object, children: tuple[SearchKey, ...] = ()) -> SearchKey:
    return SearchKey(name, args, children)


def test_search_keys() -> None:
    ctx = _ctx(NESTED, {"\\Seen", "$Work"})
    assert matches(key("SEEN"), ctx) and not matches(key("UNSEEN"), ctx)
    assert matches(key("KEYWORD", "$Work"), ctx) and matches(key("UNKEYWORD", "$Home"), ctx)
    assert matches(key("SUBJECT", "RÉSUMÉ"), ctx)  # decoded, case-folded
    assert matches(key("FROM", "bob b."), ctx) and not matches(key("FROM", "carol"), ctx)
    assert matches(key("TO", "carol"), ctx)
    assert matches(key("BODY", "grüße"), ctx)  # quoted-printable decoded
    assert not matches(key("BODY", "inner subject"), ctx)
    assert matches(key("TEXT", "preamble"), ctx) is False and matches(key("TEXT", "Bob"), ctx)
    assert matches(key("HEADER", "content-type", ""), ctx)
    assert matches(key("SENTON", date(2026, 11, 23)), ctx)
    assert matches(key("SENTBEFORE", date(2026, 11, 24)), ctx)
    assert matches(key("ON", date(2026, 11, 24)), ctx)
    assert matches(key("SINCE", date(2026, 1, 1)), ctx)
    assert not matches(key("BEFORE", date(2026, 11, 24)), ctx)
    assert matches(key("LARGER", 99), ctx) and not matches(key("SMALLER", 100), ctx)
    assert matches(key("UID", SequenceSet((SeqRange(None, None),))), _ctx(SIMPLE, set(), uid=12))
    assert matches(key("SEQSET", SequenceSet((SeqRange(2, None),))), _ctx(SIMPLE, set(), seq=3))
    assert matches(key("OR", children=(key("DRAFT"), key("SEEN"))), ctx)
    assert matches(key("NOT", children=(key("DELETED"),)), ctx)
    assert not matches(key("AND", children=(key("SEEN"), key("DELETED"))), ctx)
    assert matches(key("MODSEQ", 5), ctx) and not matches(key("MODSEQ", 6), ctx)


def test_flag_keys_do_not_parse_the_message() -> None:
    meta = MessageMeta(1, "g", frozenset(), 1, 1, datetime(2026, 1, 1, tzinfo=UTC))

    def explode() -> Part:
        raise AssertionError("parsed for a flag key")

    assert matches(key("UNSEEN"), SearchContext(1, meta, explode))


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    msg = parse(data)
    encode_value(bodystructure(msg, True))
    encode_value(envelope(msg))
    for section in (Section(), Section((1,)), Section((1, 2), "MIME"), Section((), "TEXT"),
                    Section((2,), "HEADER")):
        section_bytes(msg, section)


@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z][A-Za-z-]{0,10}", fullmatch=True),
                          st.from_regex(r"[ -~]{0,30}", fullmatch=True)), max_size=5),
       st.binary(max_size=200).filter(lambda b: b"\n" not in b[:1]))
def test_header_plus_text_is_the_whole_message(fields: list[tuple[str, str]], body: bytes) -> None:
    raw = b"".join(f"{n}: {v}\r\n".encode() for n, v in fields) + b"\r\n" + body
    msg = parse(raw)
    header = section_bytes(msg, Section((), "HEADER"))
    assert header + section_bytes(msg, Section((), "TEXT")) == raw
