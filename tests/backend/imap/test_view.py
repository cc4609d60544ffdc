"""The view's arithmetic on its own: sequence sets and catching up, against brute force."""

from __future__ import annotations

from array import array

from hypothesis import given
from hypothesis import strategies as st

from mailmux.backend.imap.view import View
from mailmux.backend.store.interface import ViewChanges
from mailmux.protocol.imap.commands import SeqRange, SequenceSet

uid_lists = st.lists(st.integers(1, 300), max_size=60, unique=True).map(sorted)
ends = st.one_of(st.none(), st.integers(1, 320))
seqsets = st.lists(st.builds(SeqRange, ends, ends), min_size=1, max_size=6).map(
    lambda ranges: SequenceSet(tuple(ranges)))


def view_of(uids: list[int]) -> View:
    return View(1, "INBOX", False, 1, array("q", uids), modseq=10)


@given(uid_lists, seqsets, st.booleans())
def test_resolve_is_what_testing_every_number_gives(uids: list[int], seqset: SequenceSet,
                                                    by_uid: bool) -> None:
    view = view_of(uids)
    if by_uid:
        expected = [u for u in uids if seqset.contains(u, uids[-1])] if uids else []
    else:
        expected = [u for i, u in enumerate(uids, 1) if seqset.contains(i, len(uids))]
    assert view.resolve(seqset, by_uid) == expected
    assert all(view.seq_of(u) == uids.index(u) + 1 for u in uids)
    assert view.seq_of(301) == 0


@given(uid_lists, st.data())
def test_expunges_are_numbered_as_the_client_applies_them(uids: list[int],
                                                          data: st.DataObject) -> None:
    gone = sorted(data.draw(st.sets(st.sampled_from(uids))) if uids else set())
    view = view_of(uids)
    lines = view.apply(ViewChanges(11, (), tuple(gone)), allow_expunge=True)
    client = list(uids)  # what a client does with each EXPUNGE in turn
    for line in lines:
        seq = int(line.split()[1])
        del client[seq - 1]
    assert client == [u for u in uids if u not in gone] == list(view.uids)
    assert view.modseq == 11


def test_news_wait_for_a_command_that_may_expunge_and_own_changes_are_not_repeated() -> None:
    view = view_of([1, 2, 3])
    view.reported(2, 11)
    changes = ViewChanges(12, ((2, frozenset({"\\Seen"}), 11), (4, frozenset(), 12)), (1,))
    assert view.apply(changes, allow_expunge=False) == [b"* 4 EXISTS\r\n"]
    assert list(view.uids) == [1, 2, 3, 4] and view.pending_expunge == {1}
    assert view.apply(ViewChanges(12, (), ()), allow_expunge=True) == [b"* 1 EXPUNGE\r\n"]
    assert list(view.uids) == [2, 3, 4]
