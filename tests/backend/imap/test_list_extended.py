"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819) on a real node, by raw commands."""

from __future__ import annotations

from tests.backend.imap.conftest import raw_session
from tests.support.nodes import NodeProcess


def test_list_status_returns_status_for_selectable_mailboxes(node: NodeProcess) -> None:
    out = raw_session(
        node, b"a CREATE Work/2026\r\n",
        b"b APPEND Work/2026 (\\Seen) {5+}\r\nhello\r\n",
        b"c APPEND Work/2026 {5+}\r\nworld\r\n",
        b'd LIST "" Work* RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n')
    assert b'* LIST (\\NonExistent \\HasChildren) "/" "Work"\r\n' in out
    listed = out.index(b'* LIST (\\HasNoChildren) "/" "Work/2026"\r\n')
    assert out[listed:].split(b"\r\n")[1] == b'* STATUS "Work/2026" (MESSAGES 2 UNSEEN 1)'
    assert b'* STATUS "Work"' not in out  # no STATUS for a name that is no mailbox
    assert b"d OK" in out


def test_subscription_outlives_its_mailbox(node: NodeProcess) -> None:
    out = raw_session(node, b"a CREATE Old\r\n", b"b SUBSCRIBE Old\r\n", b"c DELETE Old\r\n",
                      b'd LIST (SUBSCRIBED) "" Old\r\n', b'e LSUB "" Old\r\n',
                      b'f LIST "" Old\r\n')
    assert b'* LIST (\\NonExistent \\Subscribed) "/" "Old"\r\n' in out
    assert b'* LSUB () "/" "Old"\r\n' in out or b'* LSUB (\\Noselect) "/" "Old"\r\n' in out
    assert b'* LIST () "/" "Old"' not in out and b"f OK" in out


def test_bad_options_are_bad_and_the_session_goes_on(node: NodeProcess) -> None:
    out = raw_session(node, b'a LIST (RECURSIVEMATCH) "" %\r\n',
                      b'b LIST "" % RETURN (NOPE)\r\n', b'c LIST (REMOTE) "" INBOX\r\n')
    assert b"a BAD" in out and b"b BAD" in out
    assert b'* LIST () "/" "INBOX"\r\n' in out and b"c OK" in out
