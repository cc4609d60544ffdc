"""NOTIFY (RFC 5465) grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.commands import FetchAttr, Notify, NotifyGroup
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.parser import (
    MAX_NOTIFY_GROUPS,
    MAX_NOTIFY_MAILBOXES,
    NOTIFY_EVENTS,
    parse_command,
)


def args(raw: bytes) -> object:
    return parse_command(raw).args


def test_notify_none_and_set() -> None:
    assert args(b"a NOTIFY NONE\r\n") == Notify(None)
    parsed = args(b"a NOTIFY SET STATUS (selected (MessageNew (UID FLAGS) messageexpunge)) "
                  b'(mailboxes (Work "a b") (FlagChange)) (subtree Lists (MailboxName)) '
                  b"(personal NONE)\r\n")
    assert parsed == Notify((
        NotifyGroup("SELECTED", ("MessageNew", "MessageExpunge"), (),
                    (FetchAttr("UID"), FetchAttr("FLAGS"))),
        NotifyGroup("MAILBOXES", ("FlagChange",), ("Work", "a b")),
        NotifyGroup("SUBTREE", ("MailboxName",), ("Lists",)),
        NotifyGroup("PERSONAL", ()),
    ), status=True)


@pytest.mark.parametrize("raw", [
    b"a NOTIFY\r\n", b"a NOTIFY SET\r\n", b"a NOTIFY SET (personal ())\r\n",
    b"a NOTIFY SET (everything (MessageNew))\r\n", b"a NOTIFY SET (personal (Nope))\r\n",
    b"a NOTIFY SET (mailboxes (MessageNew))\r\n", b"a NOTIFY SET (personal (MessageNew)\r\n",
    b"a NOTIFY SET (selected (MessageNew (BOGUS)))\r\n",
])
def test_malformed_notify_is_bad(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert (info.value.tag, info.value.status) == ("a", "BAD")


def test_group_count_is_bounded() -> None:
    groups = b" ".join([b"(personal (MessageNew))"] * (MAX_NOTIFY_GROUPS + 1))
    with pytest.raises(ParseError) as info:
        parse_command(b"a NOTIFY SET " + groups + b"\r\n")
    assert info.value.code == "LIMIT"


def test_mailbox_count_is_bounded_across_groups() -> None:
    half = b" ".join(b"m%d" % i for i in range(MAX_NOTIFY_MAILBOXES // 2 + 1))
    group = b"(mailboxes (" + half + b") (MessageNew))"
    with pytest.raises(ParseError) as info:
        parse_command(b"a NOTIFY SET " + group + b" " + group + b"\r\n")
    assert info.value.code == "LIMIT"


_FILTER = st.sampled_from(["SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL",
                           "SUBSCRIBED", "SUBTREE", "MAILBOXES"])
_EVENTS = st.lists(st.sampled_from(sorted(NOTIFY_EVENTS.values())), unique=True, max_size=5)
_NAMES = st.lists(st.text(st.sampled_from("abXY/ ."), min_size=1, max_size=6).filter(
    lambda n: n.upper() != "INBOX"), min_size=1, max_size=3)


@given(st.booleans(), st.lists(st.tuples(_FILTER, _EVENTS, _NAMES), min_size=1, max_size=4))
def test_notify_round_trip(status: bool, groups: list[tuple[str, list[str], list[str]]]) -> None:
    """Any well-formed NOTIFY SET parses back to the groups it was made of."""
    parts = []
    expected = []
    for kind, events, names in groups:
        boxes = names if kind in ("SUBTREE", "MAILBOXES") else []
        spec = kind.lower()
        if boxes:
            spec += " (" + " ".join(f'"{n}"' for n in boxes) + ")"
        spec += " (" + " ".join(events) + ")" if events else " NONE"
        parts.append(f"({spec})")
        expected.append(NotifyGroup(kind, tuple(events), tuple(boxes)))
    raw = f"t NOTIFY SET{' STATUS' if status else ''} {' '.join(parts)}\r\n".encode()
    assert parse_command(raw).args == Notify(tuple(expected), status)
