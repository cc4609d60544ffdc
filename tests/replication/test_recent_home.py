"""\\Recent belongs to one session even across nodes: a message the home committed, and a
session there already owns, is not handed out as \\Recent again by a replica that a session
reaches after a failover (imaptest under faults: "\\Recent flag in multiple sessions").
Real nodes, real replication, imaplib."""

from __future__ import annotations

import imaplib
from collections.abc import Callable

import pytest

from tests.gateway.replicated import ALICE, Pool, inbox, replicated, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_a_message_the_home_committed_is_not_recent_again_on_a_replica(
    replicated: Callable[..., Pool],  # noqa: F811
) -> None:
    pool = replicated("ab")
    home, replica = pool.nodes["a"], pool.nodes["b"]
    with imaplib.IMAP4(*home.imap, timeout=30) as first:
        first.login(*ALICE)
        first.select("INBOX")
        body = b"Subject: recent\r\n\r\nonce\r\n"
        assert first.append("INBOX", "", None, body)[0] == "OK"
        first.noop()
        _, flags = first.fetch("1", "(FLAGS)")
        assert b"\\Recent" in flags[0]  # the home's session owns it
        wait_for(lambda: len(inbox(replica)) == 1, "the replica to hold the message")
        with imaplib.IMAP4(*replica.imap, timeout=30) as second:
            second.login(*ALICE)
            second.select("INBOX")
            assert second.untagged_responses.get("RECENT") == [b"0"]
            _, flags = second.fetch("1", "(FLAGS)")
            assert b"\\Recent" not in flags[0]
