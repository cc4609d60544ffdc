"""Divergence is found by content digests and repaired whatever the log positions say (issue 7,
invariant 4), on real node processes."""

from __future__ import annotations

import imaplib
import signal
import sqlite3
from collections.abc import Callable

import pytest

from tests.replication.support import ALICE, Pool, deliver, inbox, wait_for
from tests.support.nodes import NodeProcess


def _messages(node: NodeProcess) -> dict[int, tuple[bytes, bytes]]:
    return {uid: value for uid, value in inbox(node).items() if uid}


def _store(node: NodeProcess, uid: int, change: str, flags: str) -> None:
    with imaplib.IMAP4(*node.imap, timeout=30) as imap:
        imap.login(*ALICE)
        imap.select("INBOX")
        assert imap.uid("STORE", str(uid), change, flags)[0] == "OK"


def _edit(node: NodeProcess, *statements: str) -> None:
    db = sqlite3.connect(node.data_dir / "mailmux.sqlite3")
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


@pytest.mark.timeout(180)
def test_a_replica_that_differs_behind_its_log_is_repaired(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("ab", normal=1)
    a, b = pool.nodes.values()
    for subject in ("one", "two"):
        assert deliver(a, subject)[0] == 250
    first, second = sorted(_messages(a))
    _store(a, first, "+FLAGS", "(\\Seen)")
    wait_for(lambda: inbox(a) == inbox(b), "b in step")
    assert b.stop() == 0
    # Behind the log's back: b loses a message row and a flag. Every log position stays
    # where it was, so shipping records alone would never notice.
    _edit(b, f"DELETE FROM messages WHERE uid = {second}",
          f"UPDATE messages SET flags = '' WHERE uid = {first}")
    b.start()
    wait_for(lambda: inbox(a) == inbox(b), "b repaired by digest comparison")
    assert b"\\Seen" in _messages(b)[first][0]


@pytest.mark.timeout(180)
def test_seen_set_while_a_replica_was_stopped_reaches_it(make_pool: Callable[..., Pool]) -> None:
    """The issue's case: \\Seen through a while b is SIGSTOPped never reached b."""
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    assert deliver(a, "read me")[0] == 250
    [uid] = _messages(a)
    wait_for(lambda: all(_messages(n) == _messages(a) for n in (b, c)), "the message")
    b.signal(signal.SIGSTOP)
    try:
        _store(a, uid, "+FLAGS", "(\\Seen)")
    finally:
        b.signal(signal.SIGCONT)
    wait_for(lambda: all(inbox(n) == inbox(a) for n in (b, c)), "\\Seen on every node")


@pytest.mark.timeout(180)
def test_a_node_that_lost_its_log_converges(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool("ab", normal=1)
    a, b = pool.nodes.values()
    for subject in ("one", "two", "three"):
        assert deliver(a, subject)[0] == 250
    wait_for(lambda: inbox(a) == inbox(b), "b in step")
    assert b.stop() == 0
    _edit(b, "DELETE FROM changelog", "DELETE FROM messages")
    b.start()
    wait_for(lambda: inbox(a) == inbox(b), "b converged")
