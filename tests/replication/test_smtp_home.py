"""SMTP to recipients whose homes are on different nodes (issue 7, on real processes): each
recipient's copy is committed by that user's home — the homes stay where they are — with the
same UID on every replica, and the 250 comes only once W nodes hold each copy. Through the
gateway's submission port (smtplib, as a mail client), and straight into a node that is home
to neither recipient (as another MTA would)."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from mailmux.backend.control.client import query
from mailmux.protocol.control.messages import WhoRequest
from tests.replication.support import ALICE, Pool, wait_for
from tests.support.gateway import GatewayProcess
from tests.support.nodes import SECRET, NodeProcess

BOB = ("bob@example.test", "bob-pw")
W = 2


def _home(node: NodeProcess, user: str) -> str:
    return asyncio.run(query(node.control, WhoRequest(user), SECRET.encode(), timeout=5)).home


def _copies(node: NodeProcess, user: str, subject: str) -> list[tuple[int, int, str]]:
    """(UIDVALIDITY, UID, origin of its add record) of each copy of `subject` in user's INBOX."""
    db = sqlite3.connect(f"file:{node.data_dir / 'mailmux.sqlite3'}?mode=ro", uri=True,
                         timeout=10)
    try:
        rows = db.execute(
            "SELECT b.uidvalidity, m.uid, (SELECT c.origin FROM changelog c WHERE c.kind = "
            "'message.add' AND json_extract(c.payload, '$.guid') = m.guid AND "
            "json_extract(c.payload, '$.owner') = b.owner ORDER BY c.hlc LIMIT 1) "
            "FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
            "JOIN bodies d ON d.hash = m.body_hash WHERE b.owner = ? AND b.name = 'INBOX' "
            "AND instr(d.data, ?) > 0", (user, f"Subject: {subject}".encode())).fetchall()
        return sorted((int(v), int(u), str(o)) for v, u, o in rows)
    finally:
        db.close()


def _origin(node: NodeProcess) -> str:
    db = sqlite3.connect(f"file:{node.data_dir / 'mailmux.sqlite3'}?mode=ro", uri=True)
    try:
        return str(db.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def homes(make_pool: Callable[..., Pool]) -> Iterator[Pool]:
    """alice's home is a, bob's is c: each logged in there (and stays logged in)."""
    pool = make_pool("abc")
    a, _, c = pool.nodes.values()
    a.add_user(*BOB)
    with ExitStack() as stack:
        for node, user in ((a, ALICE), (c, BOB)):
            def login(node: NodeProcess = node, user: tuple[str, str] = user) -> bool:
                try:
                    imap = imaplib.IMAP4(*node.imap, timeout=10)
                except OSError:
                    return False
                try:
                    imap.login(*user)
                except imaplib.IMAP4.error:
                    imap.shutdown()  # bob's user record has not reached c yet
                    return False
                stack.callback(imap.logout)
                # A change makes the node claim the lease for certain (the login's claim is
                # one round, which links still coming up can miss).
                return bool(imap.subscribe("INBOX")[0] == "OK")

            wait_for(login, f"{user[0]} logged in on {node.node_id}")
        for node in pool.nodes.values():
            wait_for(lambda n=node: _home(n, ALICE[0]) == "a", f"{node.node_id}: alice at a")
            wait_for(lambda n=node: _home(n, BOB[0]) == "c", f"{node.node_id}: bob at c")
        yield pool


def _check(pool: Pool, subject: str) -> None:
    nodes = list(pool.nodes.values())
    a, _, c = nodes
    # 250 means W durable copies of *each* recipient's message: look at once, no waiting.
    for user in (ALICE[0], BOB[0]):
        holding = [n.node_id for n in nodes if _copies(n, user, subject)]
        assert len(holding) >= W, (user, holding)
    for user, home in ((ALICE[0], a), (BOB[0], c)):
        wait_for(lambda u=user: all(len(_copies(n, u, subject)) == 1 for n in nodes),
                 f"{user}'s copy of {subject} on every node")
        copies = {n.node_id: _copies(n, user, subject) for n in nodes}
        assert len(set(map(tuple, copies.values()))) == 1, copies  # one UID everywhere
        [(_, _, origin)] = copies[home.node_id]
        assert origin == _origin(home), (user, copies)  # committed by the user's home
    for node in nodes:  # and the homes stayed where they were
        assert (_home(node, ALICE[0]), _home(node, BOB[0])) == ("a", "c")


@pytest.mark.timeout(180)
def test_a_submission_to_two_homes_is_committed_by_each_home(
    homes: Pool, gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(list(homes.nodes.values()))
    with smtplib.SMTP(*gw.submission, timeout=60) as smtp:
        smtp.login(*ALICE)
        assert smtp.sendmail(ALICE[0], [ALICE[0], BOB[0]],
                             b"From: <alice@example.test>\r\nSubject: via-gateway\r\n\r\n"
                             b"hello both\r\n") == {}
    _check(homes, "via-gateway")


@pytest.mark.timeout(180)
def test_intake_at_a_node_home_to_neither_is_committed_by_each_home(homes: Pool) -> None:
    b = homes.nodes["b"]
    with smtplib.SMTP(*b.smtp, timeout=60) as smtp:
        assert smtp.sendmail("x@example.org", [ALICE[0], BOB[0]],
                             b"Subject: via-b\r\n\r\nhello both\r\n") == {}
    _check(homes, "via-b")
