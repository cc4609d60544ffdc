"""CATENATE (RFC 4469) on a real node: URLs to the user's own messages, limits, replay ids."""

from __future__ import annotations

import re

from tests.backend.imap.conftest import raw_session
from tests.support.nodes import NodeProcess

BASE = b"From: a@example.test\r\nSubject: base\r\n\r\nbase body\r\n"


def _literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def _tagged(out: bytes, tag: bytes) -> bytes:
    [line] = [ln for ln in out.split(b"\r\n") if ln.startswith(tag + b" ")]
    return line[len(tag) + 1:]


def _count(node: NodeProcess, mailbox: bytes) -> int:
    out = raw_session(node, b"s STATUS " + mailbox + b" (MESSAGES)\r\n")
    match = re.search(rb"\(MESSAGES (\d+)\)", out)
    assert match is not None, out
    return int(match.group(1))


def test_catenate_joins_text_and_sections_of_own_messages(node: NodeProcess) -> None:
    first = raw_session(node, b"a APPEND INBOX " + _literal(BASE) + b"\r\n")
    validity = re.search(rb"APPENDUID (\d+) 1\]", first)
    assert validity is not None, first
    out = raw_session(
        node, b"b APPEND Archive CATENATE (TEXT " + _literal(b"Subject: new\r\n\r\n")
        + b' URL "/INBOX/;uid=1/;section=text" TEXT ' + _literal(b"tail\r\n")
        + b' URL "/INBOX;UIDVALIDITY=' + validity.group(1)
        + b'/;UID=1/;SECTION=HEADER.FIELDS%20(SUBJECT)/;PARTIAL=0.9")\r\n',
        b"c SELECT Archive\r\n", b"d FETCH 1 BODY.PEEK[]\r\n")
    assert _tagged(out, b"b").startswith(b"OK [APPENDUID")
    assert b"{42}\r\nSubject: new\r\n\r\nbase body\r\ntail\r\nSubject: )" in out, out


def test_bad_urls_store_nothing_and_name_the_url(node: NodeProcess) -> None:
    out = raw_session(
        node, b"a APPEND INBOX " + _literal(BASE) + b"\r\n",
        b'b APPEND Archive CATENATE (URL "imap://bob%40example.test@h/INBOX/;uid=1")\r\n',
        b'c APPEND Archive CATENATE (URL "/INBOX;UIDVALIDITY=999/;uid=1")\r\n',
        b'd APPEND Archive CATENATE (URL "/INBOX/;uid=1/;section=7")\r\n',
        # MULTIAPPEND is all or nothing: the first, good message is not kept either
        b'e APPEND Archive CATENATE (URL "/INBOX/;uid=1") CATENATE (URL "/Nope/;uid=1")\r\n',
        b'f APPEND Missing CATENATE (URL "/INBOX;UIDVALIDITY=999/;uid=1")\r\n',
        b"g NOOP\r\n")
    assert _tagged(out, b"b").startswith(b"NO [BADURL imap://bob%40example.test@h/INBOX/;uid=1]")
    for tag in (b"c", b"d", b"e"):
        assert _tagged(out, tag).startswith(b"NO [BADURL "), out
    assert _tagged(out, b"f").startswith(b"NO [TRYCREATE]")
    assert _tagged(out, b"g").startswith(b"OK")
    assert _count(node, b"Archive") == 0


def test_a_catenated_message_is_bounded_by_max_message_size(quick_node: NodeProcess) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 60_000 + b"\r\n"
    out = raw_session(
        quick_node, b"a APPEND INBOX " + _literal(big) + b"\r\n",
        b'b APPEND INBOX CATENATE (URL "/INBOX/;uid=1" URL "/INBOX/;uid=1")\r\n',
        b'c APPEND INBOX CATENATE (URL "/INBOX/;uid=1" TEXT {2+}\r\nok)\r\n')
    assert _tagged(out, b"b").startswith(b"NO [TOOBIG]")
    assert _tagged(out, b"c").startswith(b"OK [APPENDUID")
    assert _count(quick_node, b"INBOX") == 2


def test_a_replayed_catenate_is_stored_once(node: NodeProcess) -> None:
    raw_session(node, b"a APPEND INBOX " + _literal(BASE) + b"\r\n")
    command = (b'r XREPLAY gw-9.c_1 APPEND Archive CATENATE (URL "/INBOX/;uid=1") '
               b'CATENATE (TEXT ' + _literal(b"Subject: two\r\n\r\n2\r\n") + b")\r\n")
    first = raw_session(node, command)
    again = raw_session(node, command)
    assert _tagged(first, b"r").startswith(b"OK [APPENDUID")
    assert _tagged(first, b"r") == _tagged(again, b"r")
    assert _count(node, b"Archive") == 2
