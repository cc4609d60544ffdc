"""Anti-entropy beyond messages, on real node processes (issue 7, invariant 4): a node whose
SQLite file lost or had altered users, passwords, mailboxes (UIDVALIDITY, UIDNEXT),
subscriptions, board readers' flags, board moderators or gateway keys while it was stopped — or
whose whole change log was wiped — converges with its peers whatever the log positions say."""

from __future__ import annotations

import imaplib
import smtplib
import sqlite3
from collections.abc import Callable

import pytest

from tests.replication.support import ALICE, Pool, wait_for
from tests.support.nodes import NodeProcess

BOB = ("bob@example.test", "bob-pw")
CAROL = ("carol@example.test", "carol-pw")

# What every node must agree on (columns that are each node's own, like creation times, and
# the change log itself are left out).
STATE = {
    "users": "SELECT name, password_hash FROM users",
    "mailboxes": "SELECT owner, name, uidvalidity, uidnext, special_use FROM mailboxes",
    "subscriptions": "SELECT user, name FROM subscriptions",
    "messages": "SELECT b.owner, b.name, m.uid, m.guid, m.flags FROM messages m "
                "JOIN mailboxes b ON b.id = m.mailbox_id",
    "board flags": "SELECT p.user, b.name, m.guid, p.flag FROM board_private p "
                   "JOIN mailboxes b ON b.id = p.mailbox_id "
                   "JOIN messages m ON m.mailbox_id = p.mailbox_id AND m.uid = p.uid",
    "moderators": "SELECT board, user, present FROM board_moderators",
    "gateway keys": "SELECT name, secret, revoked IS NULL FROM gateway_keys",
}


def state(node: NodeProcess) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(f"file:{node.data_dir / 'mailmux.sqlite3'}?mode=ro", uri=True,
                         timeout=10)
    try:
        return {what: sorted(tuple(r) for r in db.execute(query))
                for what, query in STATE.items()}
    finally:
        db.close()


def _edit(node: NodeProcess, *statements: str) -> None:
    db = sqlite3.connect(node.data_dir / "mailmux.sqlite3")
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


def _cli(node: NodeProcess, *args: str) -> None:
    result = node.cli(*args)
    assert result.returncode == 0, result.stderr


def _identical(nodes: list[NodeProcess]) -> bool:
    first = state(nodes[0])
    return all(state(n) == first for n in nodes[1:])


def _populate(pool: Pool) -> None:
    """One of every kind of state, made through node a as users and administrators do."""
    a = pool.nodes["a"]
    a.add_user(*BOB)
    a.add_user(*CAROL)
    _cli(a, "user", "del", CAROL[0])
    with imaplib.IMAP4(*a.imap, timeout=30) as imap:
        imap.login(*ALICE)
        for command in (("CREATE", "Projects"), ("SUBSCRIBE", "Projects"),
                        ("UNSUBSCRIBE", "Junk"), ("CREATE", "Old"), ("DELETE", "Old")):
            assert getattr(imap, command[0].lower())(command[1])[0] == "OK", command
    _cli(a, "board", "add", "news")
    _cli(a, "board", "moderator", "add", "news", BOB[0])
    with smtplib.SMTP(*a.smtp, timeout=30) as smtp:
        smtp.sendmail("x@example.org", ["board+news@example.test"],
                      b"Subject: news\r\n\r\nboard post\r\n")
    wait_for(lambda: bool(state(a)["messages"]), "the board post on a")
    with imaplib.IMAP4(*a.imap, timeout=30) as imap:
        imap.login(*ALICE)
        imap.select("Boards/news")
        assert imap.store("1", "+FLAGS", "(\\Seen $Read)")[0] == "OK"
    _cli(a, "gateway-key", "add", "gw-live", "--key-file", str(a.data_dir / "gw-live.key"))
    _cli(a, "gateway-key", "add", "gw-gone", "--key-file", str(a.data_dir / "gw-gone.key"))
    _cli(a, "gateway-key", "revoke", "gw-gone")
    nodes = list(pool.nodes.values())
    wait_for(lambda: _identical(nodes), "every node in step before the damage")
    held = state(a)
    assert held["board flags"] and held["moderators"] and len(held["gateway keys"]) >= 3


def _old_uidvalidity(node: NodeProcess) -> int:
    db = sqlite3.connect(node.data_dir / "mailmux.sqlite3")
    try:
        row = db.execute("SELECT key FROM state_stamps WHERE kind = 'mailbox' AND present = 0 "
                         "AND key LIKE '%Old%'").fetchone()
        return int(str(row[0]).rsplit("\x1f", 1)[1])
    finally:
        db.close()


# kind → what happens to node b's file while it is stopped
DAMAGE: dict[str, Callable[[NodeProcess], list[str]]] = {
    "users": lambda b: ["DELETE FROM users WHERE name = 'bob@example.test'",
                        "INSERT INTO users VALUES ('carol@example.test', 'x', 0)"],
    "password": lambda b: ["UPDATE users SET password_hash = 'x' "
                           "WHERE name = 'alice@example.test'"],
    "mailboxes": lambda b: ["DELETE FROM mailboxes WHERE name = 'Projects'",
                            "UPDATE mailboxes SET uidnext = 1",
                            "INSERT INTO mailboxes (owner, name, uidvalidity) VALUES "
                            f"('alice@example.test', 'Old', {_old_uidvalidity(b)})"],
    "uidvalidity": lambda b: ["UPDATE mailboxes SET uidvalidity = 12345 "
                              "WHERE name = 'Projects'"],
    "subscriptions": lambda b: ["DELETE FROM subscriptions WHERE name <> 'Trash'",
                                "INSERT INTO subscriptions VALUES ('alice@example.test', 'Junk')"],
    "board flags": lambda b: ["DELETE FROM board_seen", "DELETE FROM board_flags"],
    "moderators": lambda b: ["DELETE FROM board_moderators"],
    "gateway keys": lambda b: ["DELETE FROM gateway_keys WHERE name = 'gw-live'",
                               "UPDATE gateway_keys SET revoked = NULL, secret = 'back' "
                               "WHERE name = 'gw-gone'"],
    # With foreign keys off (the sqlite3 shell's default): messages stay behind as orphans.
    "whole change log": lambda b: ["DELETE FROM changelog", "DELETE FROM users",
                                   "DELETE FROM mailboxes", "DELETE FROM subscriptions",
                                   "DELETE FROM board_moderators", "DELETE FROM gateway_keys",
                                   "DELETE FROM state_stamps"],
}


@pytest.mark.timeout(600)
def test_a_node_damaged_while_stopped_converges_for_every_kind_of_state(
    make_pool: Callable[..., Pool],
) -> None:
    """One pool, damaged and repaired once per kind (each repair restores the state the next
    kind starts from); the whole change log last."""
    pool = make_pool("abc")
    _populate(pool)
    a, b, c = pool.nodes.values()
    before = state(a)
    for kind in sorted(DAMAGE, key=lambda k: k == "whole change log"):
        assert b.stop() == 0
        _edit(b, *DAMAGE[kind](b))
        assert state(b) != before, kind
        b.start()
        try:
            wait_for(lambda: _identical([a, b, c]), f"b repaired after losing {kind}")
        except AssertionError:
            now = state(b)
            raise AssertionError(f"{kind}: " + "; ".join(
                f"{what}: {set(now[what]) ^ set(before[what])}" for what in STATE
                if now[what] != before[what])) from None
        assert state(b) == before, kind
    # The repaired password hash is the one alice logs in with, on b too.
    with imaplib.IMAP4(*b.imap, timeout=30) as imap:
        assert imap.login(*ALICE)[0] == "OK"
