"""Message-number sets in SEARCH/SORT/THREAD criteria, found and put in UIDs (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.gateway.session.pipeline import names_messages_by_number
from mailmux.gateway.session.searchsets import NotTranslatable, by_uid, number_sets


def _sets(line: bytes, name: str = "SEARCH") -> list[bytes]:
    return [line[a:b] for a, b in number_sets(line, name)]


def test_sets_are_told_apart_from_numeric_and_string_arguments() -> None:
    assert _sets(b"q SEARCH FLAGGED LARGER 1000\r\n") == []
    assert _sets(b'q SEARCH SUBJECT "1:3" UID 5:9\r\n') == []
    assert _sets(b"q SEARCH SUBJECT 12 TEXT 4 HEADER X-Count 7\r\n") == []
    assert _sets(b'q SEARCH MODSEQ "/flags/\\\\draft" all 620 3\r\n') == [b"3"]
    assert _sets(b"q SEARCH MODSEQ 620 3:4\r\n") == [b"3:4"]
    assert _sets(b"q SEARCH 1:3 FLAGGED\r\n") == [b"1:3"]
    assert _sets(b"q SEARCH NOT 4\r\n") == [b"4"]
    # inside parentheses too (imaptest sends `OR (2,5:*) DELETED`)
    assert _sets(b"q SEARCH OR (2,5:*) DELETED (1 UNSEEN)\r\n") == [b"2,5:*", b"1"]
    assert _sets(b"q SORT (DATE SIZE) UTF-8 2:3\r\n", "SORT") == [b"2:3"]
    assert _sets(b"q THREAD REFERENCES UTF-8 4 SINCE 1-Feb-2020\r\n", "THREAD") == [b"4"]


def test_criteria_the_gateway_cannot_translate_are_refused() -> None:
    with pytest.raises(NotTranslatable):
        number_sets(b"q SEARCH RETURN (MIN) 1:3\r\n", "SEARCH")
    with pytest.raises(NotTranslatable):
        number_sets(b"q SEARCH SUBJECT {3+}\r\n", "SEARCH")


def test_sets_become_the_uids_they_name() -> None:
    uids = {b"1:3": [10, 30], b"7": [], b"2": [20]}
    assert by_uid(b"q SEARCH OR 1:3 (7) NOT 2\r\n", "SEARCH", uids.__getitem__) == (
        b"q SEARCH OR UID 10,30 (NOT ALL) NOT UID 20\r\n")


_KEYS = st.sampled_from([b"ALL", b"SEEN", b"DELETED", b"LARGER 12", b"SUBJECT 3",
                         b'TEXT "4:5"', b"UID 8:9", b"HEADER X-A 6", b"SINCE 1-Feb-2020"])
_SETS = st.lists(st.integers(1, 40), min_size=1, max_size=4).map(
    lambda ns: b",".join(b"%d" % n for n in ns))


@given(st.lists(st.one_of(_KEYS.map(lambda k: (k, False)), _SETS.map(lambda s: (s, True))),
                min_size=1, max_size=8), st.booleans())
def test_exactly_the_sets_put_in_are_found(parts: list[tuple[bytes, bool]],
                                           grouped: bool) -> None:
    words = [b"(" + w + b")" if grouped and is_set else w for w, is_set in parts]
    line = b"t SEARCH " + b" ".join(words) + b"\r\n"
    assert _sets(line) == [w for w, is_set in parts if is_set]


def test_pipelined_commands_by_number_are_seen() -> None:
    assert names_messages_by_number(b"b FETCH 3 (FLAGS)\r\n")
    assert names_messages_by_number(b"b NOOP\r\nc search 1:2\r\n")
    assert not names_messages_by_number(b"b UID FETCH 3 (FLAGS)\r\nc NOOP\r\n")
    assert not names_messages_by_number(b"b UID SEARCH ALL\r\n")
    assert not names_messages_by_number(b"")
