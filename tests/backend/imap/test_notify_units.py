"""The NOTIFY (RFC 5465) event reports computed from mailbox snapshots, no I/O."""

from __future__ import annotations

import dataclasses

from mailmux.backend.imap.notify import Notifier, unsupported
from mailmux.backend.store.interface import BOARD_OWNER, MailboxInfo
from mailmux.protocol.imap.commands import Notify
from mailmux.protocol.imap.parser import parse_command


def spec(text: bytes) -> Notify:
    parsed = parse_command(b"a NOTIFY SET " + text + b"\r\n").args
    assert isinstance(parsed, Notify)
    return parsed


def box(mailbox_id: int, name: str, messages: int = 0, uidnext: int = 1, modseq: int = 1,
        owner: str = "u") -> MailboxInfo:
    return MailboxInfo(id=mailbox_id, owner=owner, name=name, uidvalidity=7, uidnext=uidnext,
                       highestmodseq=modseq, special_use=None, subscribed=False,
                       messages=messages, unseen=0, size=0)


INBOX, WORK = box(1, "INBOX", 1, 2), box(2, "Work", 3, 4)


def test_initial_status_items_follow_the_events() -> None:
    for events, line in [
        (b"MessageExpunge", b'* STATUS "Work" (MESSAGES 3)\r\n'),
        (b"MessageNew", b'* STATUS "Work" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 7)\r\n'),
        (b"FlagChange", b'* STATUS "Work" (UIDVALIDITY 7 HIGHESTMODSEQ 1)\r\n'),
    ]:
        notifier = Notifier(spec(b"STATUS (mailboxes Work (" + events + b"))"), False)
        assert notifier.start([INBOX, WORK], [], None, status=True) == [line]


def test_no_status_for_the_selected_mailbox_nor_without_status() -> None:
    notifier = Notifier(spec(b"STATUS (personal (MessageNew))"), False)
    assert notifier.start([INBOX, WORK], [], selected=1, status=True) == [
        b'* STATUS "Work" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 7)\r\n']
    assert Notifier(spec(b"(personal (MessageNew))"), False).start([WORK], [], None,
                                                                   status=False) == []


def test_message_events_on_other_mailboxes() -> None:
    notifier = Notifier(spec(b"(personal (MessageNew MessageExpunge))"), False)
    notifier.start([INBOX, WORK], [], None, status=False)
    arrived = dataclasses.replace(WORK, messages=4, uidnext=5)
    assert notifier.changes([INBOX, arrived], [], None) == [
        b'* STATUS "Work" (MESSAGES 4 UIDNEXT 5 UIDVALIDITY 7)\r\n']
    assert notifier.changes([INBOX, arrived], [], None) == []  # reported once
    expunged = dataclasses.replace(arrived, messages=2, highestmodseq=9)
    assert notifier.changes([INBOX, expunged], [], None) == [
        b'* STATUS "Work" (MESSAGES 2)\r\n']
    flagged = dataclasses.replace(expunged, highestmodseq=12)
    assert notifier.changes([INBOX, flagged], [], None) == []  # FlagChange was not asked


def test_mailbox_names_and_subscriptions() -> None:
    notifier = Notifier(spec(b"(personal (MailboxName SubscriptionChange))"), False)
    notifier.start([INBOX, WORK], [], None, status=False)
    renamed = dataclasses.replace(WORK, name="Jobs/Été")
    created = box(3, "New")
    assert notifier.changes([INBOX, renamed, created], ["New"], None) == [
        b'* LIST () "/" "Jobs/&AMk-t&AOk-" ("OLDNAME" ("Work"))\r\n',
        b'* LIST () "/" "New"\r\n',
        b'* LIST (\\Subscribed) "/" "New"\r\n']
    assert notifier.changes([INBOX, renamed], [], None) == [
        b'* LIST (\\NonExistent) "/" "New"\r\n']


def test_boards_are_not_personal_and_groups_apply_in_order() -> None:
    board = box(9, "Boards/news", 1, 2, owner=BOARD_OWNER)
    notifier = Notifier(spec(b"(inboxes NONE) (personal (MessageNew))"), False)
    notifier.start([INBOX, board], [], None, status=False)
    grown = [dataclasses.replace(INBOX, messages=2, uidnext=3),
             dataclasses.replace(board, messages=2, uidnext=3)]
    assert notifier.changes(grown, [], None) == []  # INBOX: its first group says NONE


def test_unsupported_events_are_named() -> None:
    assert unsupported(spec(b"(personal (MessageNew AnnotationChange))")) == [
        "AnnotationChange"]
