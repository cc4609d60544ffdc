"""Extended LIST (RFC 5258) and LIST-STATUS (RFC 5819) grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.commands import ListArgs
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.parser import MAX_LIST_PATTERNS, parse_command
from mailmux.protocol.imap.response import encode_value


def args(raw: bytes) -> object:
    return parse_command(raw).args


def test_basic_list_is_not_extended() -> None:
    assert args(b'a LIST "" %\r\n') == ListArgs("", ("%",))


def test_any_extended_element_marks_the_command_extended() -> None:
    assert args(b'a LIST () "" %\r\n') == ListArgs("", ("%",), extended=True)
    assert args(b'a LIST "" (%)\r\n') == ListArgs("", ("%",), extended=True)
    assert args(b'a LIST "" % RETURN ()\r\n') == ListArgs("", ("%",), extended=True)


def test_status_return_option() -> None:
    parsed = args(b'a LIST "" (INBOX Sent) RETURN (CHILDREN STATUS (MESSAGES UIDNEXT))\r\n')
    assert parsed == ListArgs("", ("INBOX", "Sent"), (), ("CHILDREN", "STATUS"), True,
                              ("MESSAGES", "UIDNEXT"))


@pytest.mark.parametrize("raw", [
    b'a LIST (IMAPTEST) "" ""\r\n',
    b'a LIST (RECURSIVEMATCH) "" ""\r\n',
    b'a LIST (RECURSIVEMATCH REMOTE) "" ""\r\n',
    b'a LIST "" "" RETURN (IMAPTEST)\r\n',
    b'a LIST "" % RETURN (STATUS (BOGUS))\r\n',
    b'a LIST "" % RETURN (STATUS ())\r\n',
    b'a LIST "" ()\r\n',
    b'a LSUB "" (%)\r\n',
    b'a LSUB (SUBSCRIBED) "" %\r\n',
])
def test_bad_extended_lists(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert (info.value.tag, info.value.status) == ("a", "BAD")


def test_pattern_count_is_bounded() -> None:
    many = b" ".join([b"x"] * (MAX_LIST_PATTERNS + 1))
    with pytest.raises(ParseError) as info:
        parse_command(b'a LIST "" (' + many + b")\r\n")
    assert info.value.code == "LIMIT"


_SELECT = st.lists(st.sampled_from(["SUBSCRIBED", "REMOTE", "SPECIAL-USE"]), unique=True)
_RETURN = st.lists(st.sampled_from(["SUBSCRIBED", "CHILDREN", "SPECIAL-USE"]), unique=True)
_STATUS = st.one_of(st.none(), st.lists(st.sampled_from(
    ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "RECENT", "SIZE", "HIGHESTMODSEQ"]),
    unique=True, min_size=1))
_PATTERN = st.text(st.sampled_from("ab/%*é ."), min_size=1, max_size=12)


@given(_SELECT, st.booleans(), st.lists(_PATTERN, min_size=1, max_size=5), _RETURN, _STATUS)
def test_extended_list_round_trip(select: list[str], recursive: bool, patterns: list[str],
                                  returns: list[str], status: list[str] | None) -> None:
    """Any well-formed extended LIST parses back to the options and patterns it was made of."""
    if recursive and set(select) - {"REMOTE"}:
        select = [*select, "RECURSIVEMATCH"]
    return_items = list(returns)
    if status is not None:
        return_items.append(f"STATUS ({' '.join(status)})")
    raw = (b"t LIST (" + " ".join(select).encode() + b') "" ('
           + b" ".join(encode_value(p.encode()) for p in patterns)
           + b") RETURN (" + " ".join(return_items).encode() + b")\r\n")
    parsed = parse_command(raw).args
    assert parsed == ListArgs("", tuple(patterns), tuple(select),
                              tuple([*returns, *(["STATUS"] if status is not None else [])]),
                              True, tuple(status) if status is not None else None)
