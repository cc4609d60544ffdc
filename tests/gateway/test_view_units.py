"""Pure parts of view continuity: the client's map, catch-up verdicts, replay rewriting."""

from __future__ import annotations

import asyncio

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailmux.gateway.responses import Response, parse_fetch, vanished, walk_fetch
from mailmux.gateway.session.failover import behind, reconcile
from mailmux.gateway.session.relay import Relay, _held_back, _rewritten
from mailmux.gateway.session.replay import SetCommand, parse_set, with_replay_id
from mailmux.gateway.session.view import MailboxView


def view_of(uids: list[int | None], gone: set[int] = frozenset()) -> MailboxView:  # type: ignore[assignment]
    return MailboxView(select=b"SELECT INBOX\r\n", uidvalidity=1, uids=list(uids),
                       gone=set(gone))


def test_fetch_items_are_found_past_literals_and_strings() -> None:
    raw = (b'* 7 FETCH (ENVELOPE ("UID 99" NIL) BODY[HEADER.FIELDS (SUBJECT)] {13}\r\n'
           b"UID 5 FLAGS\r\n UID 42 FLAGS (\\Seen $Junk) MODSEQ (17))\r\n")
    fetch = parse_fetch(raw)
    assert fetch is not None
    assert (fetch.seq, fetch.uid, fetch.flags, fetch.modseq) == (7, 42, b"\\Seen $Junk", 17)
    assert parse_fetch(b"* 3 EXISTS\r\n") is None
    parse_fetch(b"* 3 FETCH (UID \r\n")  # garbled: never raises


def test_the_view_follows_exists_expunge_fetch_and_vanished() -> None:
    view = view_of([])
    for raw in (b"* 3 EXISTS\r\n", b"* 1 FETCH (UID 10 FLAGS ())\r\n",
                b"* 2 FETCH (UID 11 FLAGS (\\Seen))\r\n", b"* 3 FETCH (FLAGS () UID 12)\r\n",
                b"* 2 EXPUNGE\r\n", b"* 3 EXISTS\r\n", b"* OK [HIGHESTMODSEQ 9] x\r\n"):
        view.observe(Response(raw))
    assert view.uids == [10, 12, None] and view.gone == {11} and view.highestmodseq == 9
    assert view.unknown() == [3]
    view.observe(Response(b"* VANISHED 10,30:40\r\n"))
    assert view.uids == [12, None] and view.gone == {10, 11}
    assert not view.confused
    view.observe(Response(b"* 9 EXPUNGE\r\n"))
    assert view.confused


def test_a_replica_that_still_holds_an_expunged_uid_is_behind() -> None:
    client = view_of([1, 2, 4, 5], gone={3})
    lagging = view_of([1, 2, 3, 4, 5])
    lag = behind(client, lagging, set())
    assert lag is not None and lag.hard
    assert behind(client, view_of([1, 2, 4, 5, 6]), set()) is None


def test_missing_messages_the_command_itself_removes_are_not_waited_for() -> None:
    client = view_of([1, 2, 3])
    moved_away = view_of([1, 3])
    lag = behind(client, moved_away, set())
    assert lag is not None and not lag.hard
    assert behind(client, moved_away, {2}) is None


def test_new_messages_the_client_was_told_of_are_waited_for_then_told_gone() -> None:
    """Seen under faults: new mail told by the old home before its acknowledgements, then
    taken back, never reached the new node, and the session ended ("has not caught up ...
    lacks new messages") instead of the client hearing it was expunged."""
    client = view_of([1, 2, None])
    lag = behind(client, view_of([1, 2]), set())
    assert lag is not None and not lag.hard
    assert behind(client, view_of([1, 2, 7]), set()) is None


def test_a_replica_behind_the_shown_modseq_and_missing_known_messages_is_hard_lag() -> None:
    """Found under faults: a new node behind the HIGHESTMODSEQ the client was shown lacked
    messages the client knew; after catch-up they were told as EXPUNGEd, though they were only
    on their way, and imaptest saw UIDs change under sequence numbers."""
    client = view_of([1, 2, 3])
    client.highestmodseq = 20
    node = view_of([1, 3])
    node.highestmodseq = 12
    lag = behind(client, node, set())
    assert lag is not None and lag.hard
    node.highestmodseq = 20  # caught up: 2 was expunged meanwhile, which may be told
    assert behind(client, node, set()) is None
    everything = view_of([1, 2, 3])
    everything.highestmodseq = 12  # behind, but nothing missing: wait, then reconcile
    lag = behind(client, everything, set())
    assert lag is not None and not lag.hard


class _Session:
    """What `reconcile` needs of a client session: its ENABLEs and a way to the client."""

    def __init__(self, pipelined: bool = False) -> None:
        self.enabled: list[bytes] = []
        self.sent: list[bytes] = []
        self.pipelined = pipelined

    async def send(self, raw: bytes) -> None:
        self.sent.append(raw)

    def pipelined_by_number(self) -> bool:
        return self.pipelined


def test_failover_tells_a_message_whose_modseq_moved_even_with_the_same_flags() -> None:
    """Found by imaptest's checkpoints under faults ("modseqs differ"): the reconcile after a
    failover told flags that differ, never a MODSEQ, so a client kept a stale one."""
    client = view_of([1, 2, 3])
    node = view_of([1, 2, 3])
    for view, modseqs in ((client, (10, 11, 30)), (node, (10, 15, 25))):
        for seq, modseq in enumerate(modseqs, 1):
            view.observe(Response(b"* %d FETCH (UID %d FLAGS (\\Seen) MODSEQ (%d))\r\n"
                                  % (seq, seq, modseq)))
    session = _Session()
    current = Relay(tag=b"a1", raw=b"a1 NOOP\r\n", name="NOOP")
    asyncio.run(reconcile(session, client, node, current))  # type: ignore[arg-type]
    # 2 moved on: told with its MODSEQ; 3 is lower on the node: MODSEQs never go back.
    assert session.sent == [b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (15))\r\n"]
    assert client.modseqs == {1: 10, 2: 15, 3: 30}


def test_replay_ids_go_right_after_the_tag() -> None:
    assert with_replay_id(b"a1 UID MOVE 3 Archive\r\n", "gx-1") == (
        b"a1 XREPLAY gx-1 UID MOVE 3 Archive\r\n")


def test_a_partly_relayed_fetch_asks_only_for_the_rest() -> None:
    relay = Relay(tag=b"f", raw=b"f FETCH 1:* (UID BODY.PEEK[])\r\n", name="FETCH",
                  snapshot=list(range(1, 301)), fetched=set(range(1, 65)), attempt=1)
    assert _rewritten(relay, SetCommand(relay.raw)) == b"f FETCH 65:300 (UID BODY.PEEK[])\r\n"
    relay.fetched = set(range(1, 301))
    assert _rewritten(relay, SetCommand(relay.raw)) is None
    by_uid = Relay(tag=b"u", raw=b"u UID FETCH 10:* (FLAGS)\r\n", name="FETCH", uid=True,
                   snapshot=[5, 10, 11, 12], fetched={10, 12}, attempt=1)
    assert _rewritten(by_uid, SetCommand(by_uid.raw)) == b"u UID FETCH 11 (FLAGS)\r\n"


def test_a_move_by_number_resent_after_expunges_goes_by_uid() -> None:
    relay = Relay(tag=b"m", raw=b"m MOVE 2:3 Archive\r\n", name="MOVE",
                  snapshot=[7, 8, 9], view_changed=True, attempt=1)
    assert _rewritten(relay, SetCommand(relay.raw)) == b"m UID MOVE 8:9 Archive\r\n"


@given(st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_sequence_sets_round_trip(numbers: list[int]) -> None:
    text = ",".join(str(n) for n in numbers).encode()
    parsed = parse_set(text)
    assert parsed is not None
    assert [n for n in range(1, 51) if parsed.contains(n, 50)] == sorted(set(numbers))


def test_a_body_that_imitates_response_codes_moves_nothing_in_the_view() -> None:
    """Response codes belong to status responses: text in a fetched body, a mailbox name or a
    search answer is the user's, and must not move the client's HIGHESTMODSEQ or UIDVALIDITY."""
    view = view_of([10])
    view.observe(Response(b"* OK [HIGHESTMODSEQ 9] x\r\n"))
    body = b"[HIGHESTMODSEQ 99999] [UIDVALIDITY 7] [UIDNEXT 500]\r\n"
    for raw in (b"* 1 FETCH (UID 10 BODY[] {%d}\r\n%s)\r\n" % (len(body), body),
                b'* LIST () "/" "[UIDVALIDITY 7]"\r\n',
                b"* SEARCH\r\n", b"* 3 RECENT [HIGHESTMODSEQ 99999]\r\n"):
        view.observe(Response(raw))
    assert (view.highestmodseq, view.uidvalidity, view.uidnext) == (9, 1, None)
    assert view.uids == [10] and not view.confused
    view.observe(Response(b"* OK [UIDNEXT 11] next\r\n"))
    view.observe(Response(b"a1 OK [HIGHESTMODSEQ 12] done\r\n"))
    assert (view.uidnext, view.highestmodseq) == (11, 12)


_ITEM = st.one_of(
    st.tuples(st.sampled_from([b"UID", b"uid", b"RFC822.SIZE", b"MODSEQ", b"X1"]),
              st.integers(0, 2**40).map(lambda n: b"%d" % n)),
    st.tuples(st.sampled_from([b"FLAGS", b"Flags", b"MODSEQ"]),
              st.lists(st.sampled_from([b"\\Seen", b"$Junk", b"\\Deleted", b"7"]),
                       max_size=3).map(lambda f: b"(" + b" ".join(f) + b")")),
)


@given(st.integers(1, 10**6), st.lists(_ITEM, max_size=5))
def test_the_quick_fetch_reading_agrees_with_the_item_walk(seq: int,
                                                            items: list[tuple[bytes, bytes]]
                                                            ) -> None:
    raw = b"* %d FETCH (%s)\r\n" % (seq, b" ".join(n + b" " + v for n, v in items))
    assert parse_fetch(raw) == walk_fetch(raw)


def test_vanished_ranges() -> None:
    assert vanished(b"* VANISHED (EARLIER) 3:1,9\r\n") == [1, 2, 3, 9]
    assert vanished(b"* VANISHED 1:99999999\r\n") is None


@given(st.binary(max_size=200))
def test_parse_fetch_never_raises(tail: bytes) -> None:
    parse_fetch(b"* 1 FETCH (" + tail)


_EVENTS = st.lists(st.one_of(
    st.tuples(st.just("exists"), st.integers(0, 6)),
    st.tuples(st.just("fetch"), st.integers(1, 12)),
    st.tuples(st.just("expunge"), st.integers(1, 12)),
    st.tuples(st.just("vanished"), st.integers(1, 40)),
    st.tuples(st.just("ask"), st.just(0)),
), max_size=40)


@settings(max_examples=400)
@given(_EVENTS)
@example([("exists", 2), ("fetch", 2), ("ask", 0), ("expunge", 2), ("ask", 0)])
@example([("exists", 3), ("fetch", 3), ("fetch", 4), ("ask", 0), ("exists", 0), ("ask", 0)])
def test_unknown_is_what_a_full_scan_finds_whatever_the_responses(events: list[tuple[str, int]]
                                                                   ) -> None:
    """`unknown` scans only past the known prefix; it must still find every None."""
    view = view_of([])
    next_uid = 1
    for kind, n in events:
        if kind == "exists":
            view.observe(Response(b"* %d EXISTS\r\n" % (view.exists + n)))
        elif kind == "fetch" and view.exists:
            n = n % view.exists + 1
            if view.uids[n - 1] is None:
                next_uid += 1  # the map takes whatever UID the backend says
                view.observe(Response(b"* %d FETCH (UID %d FLAGS ())\r\n" % (n, next_uid * 10)))
        elif kind == "expunge" and view.exists:
            view.observe(Response(b"* %d EXPUNGE\r\n" % (n % view.exists + 1)))
        elif kind == "vanished":
            view.observe(Response(b"* VANISHED %d\r\n" % (n * 10)))
        else:
            assert view.unknown() == [i + 1 for i, u in enumerate(view.uids) if u is None]
    assert view.unknown() == [i + 1 for i, u in enumerate(view.uids) if u is None]
    assert None not in view.uids[:view.known]


def test_a_learnt_map_is_not_scanned_again() -> None:
    view = view_of([])
    view.observe(Response(b"* 3 EXISTS\r\n"))
    for seq, uid in ((1, 5), (2, 6), (3, 7)):
        view.observe(Response(b"* %d FETCH (UID %d)\r\n" % (seq, uid)))
    assert view.unknown() == [] and view.known == 3
    view.observe(Response(b"* 4 EXISTS\r\n"))
    assert view.unknown() == [4] and view.known == 3
    view.observe(Response(b"* 1 EXPUNGE\r\n"))
    assert view.known == 2 and view.unknown() == [3]
    view.observe(Response(b"* 1 EXISTS\r\n"))  # a shrinking EXISTS (confused, but followed)
    view.observe(Response(b"* 3 EXISTS\r\n"))
    assert view.unknown() == [2, 3]


def test_numbers_are_translated_while_expunges_wait() -> None:
    """Message 3 (UID 30) is gone on the node but the client still counts it."""
    view = MailboxView(select=b"INBOX", uids=[10, 20, 30, 40, 50], pending={30})
    assert [view.to_node(s) for s in range(1, 6)] == [1, 2, None, 3, 4]
    assert [view.to_client(n) for n in range(1, 5)] == [1, 2, 4, 5]
    assert view.from_node(b"* 3 FETCH (FLAGS (\\Seen) UID 40)\r\n") == (
        b"* 4 FETCH (FLAGS (\\Seen) UID 40)\r\n")
    assert view.from_node(b"* 5 EXISTS\r\n") == b"* 6 EXISTS\r\n"
    assert view.from_node(b"* SEARCH 1 3 4 (MODSEQ 9)\r\n", b"SEARCH") == (
        b"* SEARCH 1 4 5 (MODSEQ 9)\r\n")
    assert view.from_node(b"* SORT 4 3\r\n", b"SORT") == b"* SORT 5 4\r\n"
    assert view.from_node(b"* THREAD (3 (4))(1)\r\n", b"THREAD") == b"* THREAD (4 (5))(1)\r\n"
    assert view.from_node(b"* SEARCH 3\r\n") == b"* SEARCH 3\r\n"  # a UID SEARCH: UIDs
    assert view.from_node(b"* OK [ALERT] 3 things\r\n") == b"* OK [ALERT] 3 things\r\n"
    view.pending.clear()
    assert view.from_node(b"* 3 FETCH (FLAGS ())\r\n") == b"* 3 FETCH (FLAGS ())\r\n"


def test_unknown_messages_take_their_uids_from_the_gap_they_lie_in() -> None:
    view = MailboxView(select=b"SELECT INBOX\r\n", uids=[10, None, None, 40, None])
    assert view.tail_unknown() == 1
    assert view.fill_from([10, 20, 30, 40, 50, 60]) == []
    assert view.uids == [10, 20, 30, 40, 50]


def test_unknown_messages_gone_on_the_node_become_placeholders_to_tell_gone() -> None:
    # 20 and 30 told by EXISTS only; 30 expunged on the node since, and one of the two
    # tail messages too: the last of each run stand for the ones gone.
    view = MailboxView(select=b"SELECT INBOX\r\n", uids=[10, None, None, 40, None, None])
    assert view.fill_from([10, 20, 40, 50]) == [-1, -2]
    assert view.uids == [10, 20, -1, 40, 50, -2]
    # a later failover numbers its placeholders apart from the ones still pending
    view.pending |= {-1, -2}
    view.uids.append(None)
    assert view.fill_from([10, 20, 40, 50]) == [-3]
    assert view.unknown() == []


def test_failover_tells_unknown_messages_gone_on_the_node_and_keeps_the_rest_exact() -> None:
    """Found under faults (seeds 2, 4, 6, 10: "message 36 is UID 62 on the new node, not 61",
    and a BYE): a message the client knew only by number had been expunged on the new node;
    the reconcile gave its place the next message's UID, and the view broke."""
    client = view_of([10, None, 30, 40, None])
    node = view_of([10, 30, 40, 50])
    session = _Session()
    asyncio.run(reconcile(session, client, node,  # type: ignore[arg-type]
                          Relay(tag=b"n", raw=b"n NOOP\r\n", name="NOOP")))
    assert session.sent == [b"* 2 EXPUNGE\r\n"]
    assert client.uids == [10, 30, 40, 50]
    # during a FETCH by number no EXPUNGE may go out: it waits, numbers translated meanwhile
    client = view_of([10, None, 30, 40, None])
    session = _Session()
    asyncio.run(reconcile(session, client, node,  # type: ignore[arg-type]
                          Relay(tag=b"f", raw=b"f FETCH 1:* FLAGS\r\n", name="FETCH")))
    assert session.sent == []
    assert client.uids == [10, -1, 30, 40, 50] and client.pending == {-1}
    assert client.to_node(3) == 2
    # nor during a NOOP with a FETCH by number pipelined behind it (RFC 3501 5.5)
    client = view_of([10, None, 30, 40, None])
    session = _Session(pipelined=True)
    asyncio.run(reconcile(session, client, node,  # type: ignore[arg-type]
                          Relay(tag=b"n", raw=b"n NOOP\r\n", name="NOOP")))
    assert session.sent == [] and client.pending == {-1}


def test_a_command_by_number_naming_unknown_uids_goes_in_the_nodes_numbers() -> None:
    """Seen under faults once expunges were held back for pipelined commands: a FETCH by
    number that named a message known only by number ended the session."""
    view = view_of([10, 20, 30, None])
    view.pending = {20}
    relay = Relay(tag=b"f", raw=b"f FETCH 3:4 (FLAGS)\r\n", name="FETCH",
                  snapshot=list(view.uids), view_changed=True)
    assert _rewritten(relay, SetCommand(relay.raw), view) == b"f FETCH 2:3 (FLAGS)\r\n"


def test_expunges_the_client_may_not_hear_now_are_held_back() -> None:
    """Seen under faults: a FETCH by number replayed in UIDs after a failover let the node
    send EXPUNGE, which reached a client still waiting for that FETCH ("Referenced message
    expunged")."""
    view = view_of([10, 20, 30])
    fetch = Relay(tag=b"f", raw=b"f FETCH 1:3 (FLAGS)\r\n", name="FETCH")
    quiet, pipelined = _Session(), _Session(pipelined=True)
    assert _held_back(quiet, fetch, view, Response(b"* 2 EXPUNGE\r\n"))  # type: ignore[arg-type]
    assert view.pending == {20}
    noop = Relay(tag=b"n", raw=b"n NOOP\r\n", name="NOOP")
    assert not _held_back(quiet, noop, view, Response(b"* 1 EXPUNGE\r\n"))  # type: ignore[arg-type]
    assert _held_back(pipelined, noop, view, Response(b"* 1 EXPUNGE\r\n"))  # type: ignore[arg-type]
    own = Relay(tag=b"e", raw=b"e EXPUNGE\r\n", name="EXPUNGE")
    assert not _held_back(pipelined, own, view, Response(b"* 3 EXPUNGE\r\n"))  # type: ignore[arg-type]
    assert _held_back(quiet, fetch, view, Response(b"* VANISHED 30\r\n"))  # type: ignore[arg-type]
    assert not _held_back(quiet, fetch, view,  # type: ignore[arg-type]
                          Response(b"* VANISHED (EARLIER) 30\r\n"))
    assert view.pending == {10, 20, 30}



def test_a_replayed_command_by_number_names_messages_learned_at_the_failover() -> None:
    """Seen under faults (seed 6): a STORE by number naming a message known only by number,
    replayed after a failover, ended the session ("cannot be translated after expunges")."""
    client = view_of([10, None, 30, 40])
    store = Relay(tag=b"s", raw=b"s STORE 2:3 +FLAGS (\\Seen)\r\n", name="STORE",
                  snapshot=list(client.uids), attempt=1)
    asyncio.run(reconcile(_Session(), client, view_of([10, 20, 30]),  # type: ignore[arg-type]
                          store))
    assert store.snapshot == [10, 20, 30, 40] and client.pending == {40}
    assert _rewritten(store, SetCommand(store.raw), client) == (
        b"s UID STORE 20,30 +FLAGS (\\Seen)\r\n")
