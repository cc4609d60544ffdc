"""Extended LIST answers (RFC 5258) computed from a mailbox list, no I/O."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailmux.backend.imap.listing import Listed, Matcher, list_responses, listed
from mailmux.backend.store.interface import MailboxInfo
from mailmux.protocol.imap.parser import parse_command

# The mailboxes of imaptest's "listext" script: t/test4 and t/test7 exist only as parents,
# t/test6 was deleted while subscribed.
NAMES = ["INBOX", "t", "t/test1", "t/test2", "t/test2/test1", "t/test3", "t/test4/test5",
         "t/test4/test52", "t/test7/test7", "t/test8/test8", "t/test8/test9"]
SUBSCRIBED = {"t/test1", "t/test2/test1", "t/test6", "t/test7/test7", "t/test8/test8",
              "t/test8/test9"}


def _info(name: str, index: int, special_use: str | None = None) -> MailboxInfo:
    return MailboxInfo(id=index, owner="u", name=name, uidvalidity=1, uidnext=1,
                       highestmodseq=1, special_use=special_use,
                       subscribed=name in SUBSCRIBED, messages=0, unseen=0, size=0)


MAILBOXES = [_info(n, i) for i, n in enumerate(NAMES)]


def run(command: bytes) -> dict[str, Listed]:
    args = parse_command(command + b"\r\n").args
    return {item.name: item for item in listed(args, MAILBOXES, SUBSCRIBED)}  # type: ignore[arg-type]


def test_multiple_patterns_without_child_information() -> None:
    out = run(b'a LIST "" (t/*2 t/test3)')
    assert set(out) == {"t/test2", "t/test3", "t/test4/test52"}
    assert all(item.attributes == () for item in out.values())


def test_subscribed_lists_deleted_subscriptions_as_nonexistent() -> None:
    out = run(b'a LIST (SUBSCRIBED) "" t/*')
    assert set(out) == SUBSCRIBED
    assert out["t/test6"].attributes == ("\\NonExistent", "\\Subscribed")
    assert out["t/test1"].attributes == ("\\Subscribed",)


def test_recursivematch_reports_childinfo_for_unmatched_descendants() -> None:
    out = run(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" t/test2% RETURN (CHILDREN)')
    assert out == {"t/test2": Listed("t/test2", ("\\HasChildren",), ("SUBSCRIBED",))}
    out = run(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" t*test8')
    assert out["t/test8"] == Listed("t/test8", ("\\NonExistent",), ("SUBSCRIBED",))
    assert out["t/test8/test8"].attributes == ("\\Subscribed",)
    # the subscribed child matches itself: no CHILDINFO for the parent
    out = run(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" t*test7')
    assert set(out) == {"t/test7/test7"}
    out = run(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" (t/test2 t/test2/test1)')
    assert set(out) == {"t/test2/test1"}


def test_children_and_subscribed_return_options() -> None:
    out = run(b'a LIST "" t/% RETURN (CHILDREN SUBSCRIBED)')
    assert out["t/test1"].attributes == ("\\HasNoChildren", "\\Subscribed")
    assert out["t/test2"].attributes == ("\\HasChildren",)
    assert out["t/test4"].attributes == ("\\NonExistent", "\\HasChildren")


def test_special_use_selection() -> None:
    boxes = [*MAILBOXES, _info("Sent", 99, "\\Sent")]
    args = parse_command(b'a LIST (SPECIAL-USE) "" *\r\n').args
    assert [i.name for i in listed(args, boxes, SUBSCRIBED)] == ["Sent"]  # type: ignore[arg-type]


def test_childinfo_is_formatted_as_extended_data() -> None:
    args = parse_command(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" (t/test2)\r\n').args
    lines = list_responses(args, MAILBOXES, False, subscriptions=SUBSCRIBED)  # type: ignore[arg-type]
    assert lines == [b'* LIST () "/" "t/test2" ("CHILDINFO" ("SUBSCRIBED"))\r\n']


def test_basic_list_keeps_rfc3501_attributes() -> None:
    args = parse_command(b'a LIST "" t/%\r\n').args
    lines = list_responses(args, MAILBOXES, False)  # type: ignore[arg-type]
    assert b'* LIST (\\Noselect \\HasChildren) "/" "t/test4"\r\n' in lines


_NAME = st.text(st.sampled_from("ab/"), min_size=1, max_size=8).filter(
    lambda n: "//" not in n and not n.startswith("/") and not n.endswith("/"))


@settings(max_examples=200)
@given(st.lists(_NAME, min_size=1, max_size=8, unique=True), st.data())
def test_recursivematch_is_a_superset_of_the_plain_selection(names: list[str],
                                                             data: st.DataObject) -> None:
    """RECURSIVEMATCH only adds CHILDINFO parents; every CHILDINFO parent has a subscribed
    descendant that the pattern does not match."""
    subscribed = set(data.draw(st.lists(st.sampled_from(names), unique=True)))
    pattern = data.draw(st.text(st.sampled_from("ab/%*"), min_size=1, max_size=5))
    boxes = [_info(n, i) for i, n in enumerate(names)]
    quoted = pattern.encode()
    plain = parse_command(b'a LIST (SUBSCRIBED) "" "' + quoted + b'"\r\n').args
    deep = parse_command(b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" "' + quoted + b'"\r\n').args
    shown = {i.name for i in listed(plain, boxes, subscribed)}  # type: ignore[arg-type]
    recursive = listed(deep, boxes, subscribed)  # type: ignore[arg-type]
    assert shown <= {i.name for i in recursive}
    matcher = Matcher("", pattern)
    for item in recursive:
        if item.childinfo:
            assert any(s.startswith(item.name + "/") and not matcher.match(s)
                       for s in subscribed)
