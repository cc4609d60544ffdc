"""NOTIFY (RFC 5465) on a real node: events arrive without the client asking."""

from __future__ import annotations

import re

import imapclient
import pytest

from tests.backend.imap.conftest import ALICE, connect
from tests.gateway.rawimap import RawImap
from tests.support.nodes import NodeProcess

MESSAGE = b"Subject: hello\r\n\r\nhi\r\n"
PERSONAL = b"(personal (MessageNew MessageExpunge MailboxName SubscriptionChange))"


@pytest.fixture
def other(node: NodeProcess) -> imapclient.IMAPClient:
    client = connect(node)
    yield client
    client.shutdown()


def _listening(address: tuple[str, int], groups: bytes) -> RawImap:
    client = RawImap(address, timeout=30)
    client.login(*ALICE)
    assert client.command("n", b"NOTIFY SET " + groups)[-1].startswith(b"n OK")
    return client


def test_events_of_other_mailboxes_arrive_unasked(node: NodeProcess,
                                                  other: imapclient.IMAPClient) -> None:
    client = _listening(node.imap, PERSONAL)
    try:
        other.append("Archive", MESSAGE)
        # The socket timeout is the deadline: the response comes with no command sent.
        assert re.match(rb'\* STATUS "Archive" \(MESSAGES 1 UIDNEXT \d+ UIDVALIDITY \d+\)\r\n',
                        client.response())
        other.create_folder("Fresh")
        assert client.response() == b'* LIST () "/" "Fresh"\r\n'
        other.subscribe_folder("Fresh")
        assert client.response() == b'* LIST (\\Subscribed) "/" "Fresh"\r\n'
        other.rename_folder("Fresh", "Renamed")
        assert client.response() == b'* LIST () "/" "Renamed" ("OLDNAME" ("Fresh"))\r\n'
        assert client.command("z", "NOTIFY NONE")[-1].startswith(b"z OK")
        other.append("Archive", MESSAGE)
        assert [r for r in client.command("y", "NOOP") if b"STATUS" in r] == []
    finally:
        client.close()


def test_selected_mailbox_events_arrive_unasked(node: NodeProcess,
                                                other: imapclient.IMAPClient) -> None:
    client = _listening(node.imap, b"(selected (MessageNew (UID FLAGS) MessageExpunge "
                        b"FlagChange)) " + PERSONAL)
    try:
        assert client.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        other.append("INBOX", MESSAGE)
        assert client.response() == b"* 1 EXISTS\r\n"
        assert client.response() == b"* 1 RECENT\r\n"
        assert client.response() == b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n"
        other.select_folder("INBOX")
        other.add_flags([1], [b"\\Flagged"])
        assert re.match(rb"\* 1 FETCH \(.*\\Flagged", client.response())
        other.delete_messages([1])
        other.expunge()
        responses = [client.response() for _ in range(2)]
        assert b"* 1 EXPUNGE\r\n" in responses, responses
    finally:
        client.close()


def test_initial_status_and_unsupported_events(node: NodeProcess) -> None:
    client = RawImap(node.imap, timeout=30)
    try:
        client.login(*ALICE)
        out = client.command("a", b"NOTIFY SET STATUS (mailboxes (Archive Trash) (MessageNew))")
        assert len([r for r in out if r.startswith(b"* STATUS")]) == 2
        out = client.command("b", b"NOTIFY SET (personal (AnnotationChange))")
        assert out[-1].startswith(b"b NO [BADEVENT (MessageNew MessageExpunge FlagChange")
        out = client.command("d", b"NOTIFY SET (selected (MessageNew (BODY[])))")
        assert out[-1].startswith(b"d BAD")
        assert client.command("c", "NOOP")[-1].startswith(b"c OK")
    finally:
        client.close()
