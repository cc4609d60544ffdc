"""SORT keys (RFC 5256): base subjects and the order of a few hand-made messages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.backend.message.parsed import ParsedMessage
from mailmux.backend.message.sort import Candidate, base_subject, order_keyed, sort_order
from mailmux.backend.message.threading import ThreadInput, format_threads, thread
from mailmux.backend.store.interface import MessageMeta
from mailmux.protocol.imap.commands import SearchKey, Sort
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.parser import parse_command


@pytest.mark.parametrize(("raw", "base"), [
    ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "B"),
    ("Re: [FWD: c]", "C"),
    ("re: [fwd: [fwd: re: [fwd: babylon]]]", "BABYLON"),
    ("=?iso-8859-1?q?RE:_C?=", "C"),
    ("[xyz]", "[XYZ]"),
    ("Ad: Re: x", "AD: RE: X"),
    ("", ""),
])
def test_base_subject(raw: str, base: str) -> None:
    assert base_subject(raw) == base


def _candidate(uid: int, header: str, size: int = 10) -> Candidate:
    meta = MessageMeta(uid, "g", frozenset(), 1, size, datetime(2026, 1, uid, tzinfo=UTC))
    return Candidate(uid, meta, ParsedMessage.from_bytes(header.encode() + b"\r\n\r\nx\r\n"))


def test_sort_order_with_reverse_and_ties_by_arrival() -> None:
    messages = [_candidate(1, "Subject: b", 5), _candidate(2, "Subject: a", 7),
                _candidate(3, "Subject: Re: b", 9), _candidate(4, "Subject: a", 7)]
    assert sort_order(messages, [(False, "SUBJECT")]) == [2, 4, 1, 3]
    assert sort_order(messages, [(True, "SUBJECT")]) == [1, 3, 2, 4]
    assert sort_order(messages, [(False, "SUBJECT"), (True, "SIZE")]) == [2, 4, 3, 1]


def test_sort_by_display_name_or_address() -> None:
    messages = [_candidate(1, "From: foo bar <a@b.c>"), _candidate(2, "From: b@c.d"),
                _candidate(3, "From: d")]
    assert sort_order(messages, [(False, "DISPLAYFROM")]) == [2, 3, 1]
    assert sort_order(messages, [(False, "FROM")]) == [1, 2, 3]


def test_sort_command_parses() -> None:
    command = parse_command(b"a UID SORT (REVERSE DATE SUBJECT) UTF-8 ALL\r\n")
    assert command.uid and command.args == Sort(
        ((True, "DATE"), (False, "SUBJECT")), SearchKey("AND", (), (SearchKey("ALL"),)), "UTF-8")
    for bad in (b"a SORT (REVERSE) UTF-8 ALL\r\n", b"a SORT (NAME) UTF-8 ALL\r\n",
                b"a SORT (DATE) KOI8-R ALL\r\n"):
        with pytest.raises(ParseError):
            parse_command(bad)


def _msg(uid: int, subject: str, own: str | None, refs: tuple[str, ...] = ()) -> ThreadInput:
    return ThreadInput(uid, float(uid), subject, own, refs)


def test_references_threads_replies_and_breaks_loops() -> None:
    # imaptest "thread": 2 refers to 1 via a dummy (3's id); 3 then says it answers 2
    roots = thread("REFERENCES", [_msg(1, "x", "a@b"), _msg(2, "y", "b@b", ("a@b", "c@b")),
                                  _msg(3, "z", "c@b", ("b@b",))])
    assert format_threads(roots, lambda u: u) == "(1)(3 2)"


def test_references_groups_siblings_and_subjects() -> None:
    roots = thread("REFERENCES", [_msg(1, "hello", "1@x"), _msg(2, "Re: hello", "2@x", ("1@x",)),
                                  _msg(3, "Re: hello", "3@x", ("1@x",)),
                                  _msg(4, "Re: hello", "4@x", ("9@x",))])
    assert format_threads(roots, lambda u: u) == "(1 (2)(3)(4))"


def test_ordered_subject() -> None:
    roots = thread("ORDEREDSUBJECT", [_msg(1, "b", None), _msg(2, "a", None),
                                      _msg(3, "Re: a", None), _msg(4, "re: b", None),
                                      _msg(5, "Fwd: a", None)])
    assert format_threads(roots, lambda u: u) == "(1 4)(2 (3)(5))"


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=40),
       st.booleans(), st.booleans())
def test_order_keyed_sorts_by_keys_then_arrival(keys: list[tuple[int, int]], first: bool,
                                                second: bool) -> None:
    rows = [(uid, k) for uid, k in zip(range(100, 0, -1), keys, strict=False)]
    criteria = ((first, "SIZE"), (second, "ARRIVAL"))
    expected = sorted(rows, key=lambda r: (r[1][0] * (-1 if first else 1),
                                           r[1][1] * (-1 if second else 1), r[0]))
    assert order_keyed(rows, criteria) == [uid for uid, _ in expected]
