"""Parsing what QRESYNC, SEARCHRES and CONTEXT=SEARCH/SORT add to the grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.protocol.imap.commands import (
    CancelUpdate,
    CopyMove,
    Fetch,
    MailboxArg,
    Search,
    SearchKey,
    SeqRange,
    SequenceSet,
    Sort,
)
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.parser import parse_command
from mailmux.protocol.imap.response import format_sequence_set

SAVED = SequenceSet((), saved=True)


def test_return_partial_update_save() -> None:
    command = parse_command(b"a SEARCH RETURN (PARTIAL 4:2 SAVE) ALL\r\n")
    assert isinstance(command.args, Search)
    assert command.args.partial == (2, 4)
    assert command.args.return_options == ("PARTIAL", "SAVE")
    sort = parse_command(b"b SORT RETURN (UPDATE PARTIAL 1:1) (ARRIVAL) US-ASCII ALL\r\n")
    assert isinstance(sort.args, Sort) and sort.args.partial == (1, 1)


@pytest.mark.parametrize("bad", [b"(PARTIAL 1)", b"(PARTIAL 1:*)", b"(PARTIAL *:1)",
                                 b"(PARTIAL 0:3)", b"(PARTIAL 1:2 ALL)", b"(BOGUS)",
                                 b"(MIN MIN)", b"(PARTIAL)"])
def test_broken_return_options_are_bad(bad: bytes) -> None:
    for command in (b"t SEARCH RETURN %s ALL\r\n", b"t SORT RETURN %s (DATE) UTF-8 ALL\r\n"):
        with pytest.raises(ParseError) as info:
            parse_command(command % bad)
        assert info.value.tag == "t" and info.value.status == "BAD"


@given(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1))
def test_partial_range_is_normalised(a: int, b: int) -> None:
    command = parse_command(b"p SEARCH RETURN (PARTIAL %d:%d) ALL\r\n" % (a, b))
    assert isinstance(command.args, Search)
    assert command.args.partial == (min(a, b), max(a, b))


def test_saved_result_in_sets_and_keys() -> None:
    fetch = parse_command(b"f FETCH $ (FLAGS)\r\n")
    assert isinstance(fetch.args, Fetch) and fetch.args.sequence == SAVED
    move = parse_command(b"m UID MOVE $ Trash\r\n")
    assert isinstance(move.args, CopyMove) and move.args.sequence == SAVED
    search = parse_command(b"s SEARCH $ UID $ SEEN\r\n")
    assert isinstance(search.args, Search)
    assert search.args.key.children[:2] == (SearchKey("SEQSET", (SAVED,)),
                                            SearchKey("UID", (SAVED,)))
    assert not SAVED.contains(1, 10)


def test_cancelupdate() -> None:
    command = parse_command(b'c CANCELUPDATE "a1" a2\r\n')
    assert command.args == CancelUpdate(("a1", "a2"))
    with pytest.raises(ParseError):
        parse_command(b"c CANCELUPDATE\r\n")


def test_fetch_changedsince_vanished() -> None:
    command = parse_command(b"v UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12 VANISHED)\r\n")
    assert isinstance(command.args, Fetch)
    assert command.args.changed_since == 12 and command.args.vanished


sets = st.lists(st.integers(1, 2000), min_size=1, max_size=20)


@given(st.integers(1, 2**32 - 1), st.integers(1, 2**63 - 1), st.none() | sets,
       st.none() | st.tuples(sets, sets), st.booleans())
def test_select_qresync_params(uidvalidity: int, modseq: int, known: list[int] | None,
                               match: tuple[list[int], list[int]] | None,
                               condstore: bool) -> None:
    text = f"{uidvalidity} {modseq}"
    if known is not None:
        text += " " + format_sequence_set(known)
    if match is not None:
        text += f" ({format_sequence_set(match[0])} {format_sequence_set(match[1])})"
    params = f"(QRESYNC ({text}){' CONDSTORE' if condstore else ''})"
    command = parse_command(f"q SELECT INBOX {params}\r\n".encode())
    args = command.args
    assert isinstance(args, MailboxArg) and args.qresync is not None
    assert args.condstore == condstore
    assert (args.qresync.uidvalidity, args.qresync.modseq) == (uidvalidity, modseq)
    if known is None:
        assert args.qresync.known_uids is None
    else:
        assert args.qresync.known_uids is not None
        assert all(args.qresync.known_uids.contains(u, 2000) for u in known)
    assert (args.qresync.seq_match is None) == (match is None)


@pytest.mark.parametrize("bad", [b"(QRESYNC)", b"(QRESYNC (0 5))", b"(QRESYNC (1 0))",
                                 b"(QRESYNC (1 2 $))", b"(QRESYNC (1 2) QRESYNC (1 2))",
                                 b"(BOGUS)", b"(QRESYNC (1 2 (1:2)))"])
def test_broken_select_params_are_bad(bad: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(b"s SELECT INBOX " + bad + b"\r\n")
    assert info.value.status == "BAD"


def test_plain_ranges_still_parse() -> None:
    fetch = parse_command(b"f FETCH 1:3,5 FLAGS\r\n")
    assert isinstance(fetch.args, Fetch)
    assert fetch.args.sequence == SequenceSet((SeqRange(1, 3), SeqRange(5, 5)))
