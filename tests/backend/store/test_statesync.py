"""Content digests of the state besides messages (statesync.py): replicas fed the same records
digest alike; a row lost, altered or resurrected behind the log's back makes its kind and
bucket differ; merging the rows of those buckets both ways makes the replicas identical, and a
deletion (a tombstone) is never undone by a peer that has not heard of it yet."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailmux.backend.store import statesync
from mailmux.backend.store.hlc import HybridClock, wall_ms
from mailmux.backend.store.interface import ChangeRecord
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.outbound.queue import OutboundQueue

DOMAINS = ("example.test",)
ALICE = "alice@example.test"
BOB = "bob@example.test"
POST = b"Subject: news\r\n\r\nboard post\r\n"
OUT = b"Subject: out\r\n\r\nto the world\r\n"


async def _records(store: SqliteStore) -> list[ChangeRecord]:
    return await store.changes_after({}, 100_000)


async def _replicate(source: SqliteStore, target: SqliteStore) -> None:
    """Ship every record `target` lacks, with the bodies they name (as a peer link does)."""
    held = await target.positions()
    records = [r for r in await _records(source) if r.seq > held.get(r.origin, 0)]
    hashes = [str(r.payload["body"]) for r in records if "body" in r.payload]
    await target.apply_remote(records, await source.bodies_for(hashes))


async def _digests(store: SqliteStore) -> dict[str, str]:
    return await store._read(statesync.digests)


async def _pull(target: SqliteStore, source: SqliteStore, kind: str) -> int:
    """One anti-entropy pull of one kind, bucket by bucket, as antientropy.py does it."""
    mine = await target._read(lambda c: statesync.buckets(c, kind))
    theirs = await source._read(lambda c: statesync.buckets(c, kind))
    differ = [b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b)]
    rows = await source._read(lambda c: statesync.rows(c, kind, differ))
    need = await target._read(lambda c: statesync.bodies_wanted(c, kind, rows))
    bodies = await source.bodies_for(need)
    return await target._write(lambda tx: statesync.merge(tx, kind, rows, bodies, target.clock))


async def _sync(a: SqliteStore, b: SqliteStore) -> None:
    for kind in statesync.KINDS:
        await _pull(a, b, kind)
        await _pull(b, a, kind)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    async with SqliteStore.open(tmp_path / "a.sqlite3", "a", DOMAINS) as a, \
            SqliteStore.open(tmp_path / "b.sqlite3", "b", DOMAINS) as b:
        await a.add_user(ALICE, "alice-pw")
        await a.add_user(BOB, "bob-pw")
        await a.create_mailbox(ALICE, "Projects")
        await a.set_subscribed(ALICE, "Projects", True)
        await a.set_subscribed(ALICE, "Junk", False)
        await a.add_user("carol@example.test", "carol-pw")
        await a.delete_user("carol@example.test")
        await a.create_mailbox(ALICE, "Old")
        await a.delete_mailbox(ALICE, "Old")
        await a.add_board("news")
        await a.set_moderator("news", BOB, True)
        await a.deliver(["board+news@example.test"], POST, "x@example.org")
        board = await a.get_mailbox(ALICE, "Boards/news")
        await a.store_flags(ALICE, board.id, [board.uidnext - 1], "add", ["\\Seen", "$Read"])
        await a.add_gateway_key("gw1", "s1")
        await a.add_gateway_key("gw2", "s2")
        await a.revoke_gateway_key("gw2")
        await OutboundQueue(a).enqueue(
            "m1@example.test", ALICE, ["x@example.org"], OUT, 1000.0, 60.0)
        await _replicate(a, b)
        yield a, b


def _edit(store: SqliteStore, *statements: str) -> None:
    db = sqlite3.connect(store.db_path)
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


async def _table(store: SqliteStore, query: str) -> list[tuple[Any, ...]]:
    return await store._read(lambda c: sorted(tuple(r) for r in c.execute(query)))


async def test_replicas_fed_the_same_records_digest_alike(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    mine, theirs = await _digests(a), await _digests(b)
    assert set(mine) == set(statesync.KINDS)
    assert mine == theirs


# kind → (what a lost or altered row looks like, a query showing the state it must get back)
TAMPER = {
    "user": (["DELETE FROM users WHERE name = 'bob@example.test'"],
             "SELECT name, password_hash FROM users"),
    "password": (["UPDATE users SET password_hash = 'x' WHERE name = 'alice@example.test'",
                  "DELETE FROM state_stamps WHERE kind = 'user'"],
                 "SELECT name, password_hash FROM users"),
    "password altered": (["UPDATE users SET password_hash = 'zzz' WHERE name = "
                          "'alice@example.test'"], "SELECT name, password_hash FROM users"),
    "special-use altered": (["UPDATE mailboxes SET special_use = '\\Junk' WHERE name = 'Trash'"],
                            "SELECT owner, name, special_use FROM mailboxes"),
    "moderator withdrawn": (["UPDATE board_moderators SET present = 0"],
                            "SELECT board, user, present FROM board_moderators"),
    "mailbox": (["DELETE FROM mailboxes WHERE name = 'Projects'"],
                "SELECT owner, name, uidvalidity, special_use FROM mailboxes"),
    "uidvalidity": (["UPDATE mailboxes SET uidvalidity = 5 WHERE name = 'Projects'"],
                    "SELECT owner, name, uidvalidity FROM mailboxes"),
    "uidnext": (["UPDATE mailboxes SET uidnext = 1"],
                "SELECT owner, name, uidnext FROM mailboxes"),
    "subscription": (["DELETE FROM subscriptions"], "SELECT user, name FROM subscriptions"),
    "unsubscribed one back": (["INSERT INTO subscriptions VALUES ('alice@example.test', "
                               "'Junk')"], "SELECT user, name FROM subscriptions"),
    "deleted user back": (["INSERT INTO users VALUES ('carol@example.test', 'h', 0)"],
                          "SELECT name FROM users"),
    "deleted mailbox back": (["INSERT INTO mailboxes (owner, name, uidvalidity) SELECT "
                              "'alice@example.test', 'Old', CAST(substr(key, 24) AS INTEGER) "
                              "FROM state_stamps WHERE kind = 'mailbox' AND present = 0"],
                             "SELECT owner, name FROM mailboxes"),
    "board flags": (["DELETE FROM board_seen", "DELETE FROM board_flags"],
                    "SELECT user, flag FROM board_private"),
    "moderator": (["DELETE FROM board_moderators"],
                  "SELECT board, user, present FROM board_moderators"),
    "gateway key revoked": (["DELETE FROM gateway_keys WHERE name = 'gw2'"],
                            "SELECT name, secret, revoked IS NULL FROM gateway_keys"),
    "gateway key live": (["UPDATE gateway_keys SET revoked = NULL, secret = 'back' "
                          "WHERE name = 'gw2'", "DELETE FROM gateway_keys WHERE name = 'gw1'"],
                         "SELECT name, secret, revoked IS NULL FROM gateway_keys"),
    "outbound": (["DELETE FROM outbound_queue"],
                 "SELECT id, sender, recipients, body_hash, state FROM outbound_queue"),
    "every stamp": (["DELETE FROM state_stamps", "DELETE FROM subscriptions",
                     "DELETE FROM board_seen"],
                    "SELECT user, name FROM subscriptions"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
async def test_a_row_changed_behind_the_log_is_found_and_repaired(
    pair: tuple[SqliteStore, SqliteStore], case: str,
) -> None:
    a, b = pair
    statements, query = TAMPER[case]
    before = await _table(a, query)
    _edit(b, *statements)
    assert await _digests(a) != await _digests(b)
    await _sync(a, b)
    assert await _digests(a) == await _digests(b)
    assert await _table(b, query) == before
    assert await _table(a, query) == before


async def test_a_mailbox_recreated_by_repair_gets_its_messages_from_the_message_digests(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    """The mailbox row comes back with its UIDVALIDITY and UIDNEXT, so the message repair
    (which compares mailboxes by owner, name and UIDVALIDITY) then fills it."""
    a, b = pair
    await a.append(ALICE, "Projects", b"Subject: p\r\n\r\np\r\n", frozenset({"\\Flagged"}))
    await _replicate(a, b)
    _edit(b, "DELETE FROM mailboxes WHERE name = 'Projects'")
    await _sync(a, b)
    query = ("SELECT b.name, b.uidvalidity, b.uidnext, m.uid, m.guid FROM mailboxes b "
             "LEFT JOIN messages m ON m.mailbox_id = b.id WHERE b.name = 'Projects'")
    restored = await _table(b, query)
    assert [r[:3] for r in restored] == [r[:3] for r in await _table(a, query)]


async def test_a_deletion_is_not_undone_by_a_peer_that_has_not_heard_of_it(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    await a.delete_mailbox(ALICE, "Projects")
    await a.set_subscribed(ALICE, "Projects", False)
    await a.revoke_gateway_key("gw1")
    await a.set_moderator("news", BOB, False)
    # b has not got these records: its rows are older, and merging them changes nothing on a.
    for kind in statesync.KINDS:
        await _pull(a, b, kind)
    assert await _table(a, "SELECT name FROM mailboxes WHERE name = 'Projects'") == []
    assert await _table(a, "SELECT name FROM subscriptions WHERE name = 'Projects'") == []
    assert await a.live_gateway_keys() == {}
    assert await a.moderators("news") == []
    for kind in statesync.KINDS:
        await _pull(b, a, kind)
    assert await _digests(a) == await _digests(b)
    assert await _table(b, "SELECT name FROM mailboxes WHERE name = 'Projects'") == []


async def test_a_user_deleted_on_one_replica_goes_on_the_other(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    await a.delete_user(BOB)
    await _sync(a, b)
    assert await b.list_users() == [ALICE]
    assert await _table(b, "SELECT name FROM mailboxes WHERE owner = 'bob@example.test'") == []
    assert await _digests(a) == await _digests(b)


async def test_a_late_older_record_does_not_undo_a_later_change(tmp_path: Path) -> None:
    """Records of one register from two origins, arriving out of order: the later stamp wins
    (before, a late `user.add` brought a deleted user back, and the last `user.passwd` applied
    won whatever its time)."""
    older = [
        ChangeRecord("p", 1, 10 << 16, "user.add", {"user": ALICE, "hash": "h1"}),
        ChangeRecord("p", 2, 11 << 16, "user.passwd", {"user": ALICE, "hash": "h2"}),
    ]
    newer = [ChangeRecord("q", 1, 20 << 16, "user.passwd", {"user": ALICE, "hash": "h3"}),
             ChangeRecord("q", 2, 30 << 16, "user.del", {"user": ALICE})]
    finals = []
    for order in (older + newer, newer + older, [older[0], newer[0], older[1], newer[1]]):
        async with SqliteStore.open(tmp_path / f"{len(finals)}.sqlite3", "n", DOMAINS) as s:
            for record in order:
                await s.apply_remote([record], {})
            finals.append((await s.list_users(), await _digests(s)))
    assert finals[0][0] == [] and finals[0] == finals[1] == finals[2]


async def test_a_readers_board_flag_never_becomes_shared_through_the_message_repair(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    """The post's flag stamps hold only shared flags, so the message repair, pulling a board
    post's row, cannot make one reader's \\Seen everyone's."""
    a, b = pair
    board = await a.get_mailbox(ALICE, "Boards/news")
    _edit(b, "DELETE FROM messages WHERE mailbox_id IN "
             "(SELECT id FROM mailboxes WHERE owner = '@boards')")
    from mailmux.backend.store import repair

    key = ("@boards", "Boards/news", board.uidvalidity)
    rows = await a._read(lambda c: repair.rows(c, key, [0]))
    await b._write(lambda tx: repair.merge(tx, key, rows, [], b.clock, {}, 0))
    await _sync(a, b)
    bob_view = await b.messages(BOB, (await b.get_mailbox(BOB, "Boards/news")).id)
    alice_view = await b.messages(ALICE, (await b.get_mailbox(ALICE, "Boards/news")).id)
    assert "\\Seen" not in bob_view[0].flags
    assert {"\\Seen", "$Read"} <= set(alice_view[0].flags)


async def test_a_local_change_after_a_repair_from_a_peer_whose_clock_runs_ahead_stands(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    """The repair moves this node's clock past the stamps it takes in: a password set here
    afterwards is the later change everywhere (it was stamped below the peer's, and lost)."""
    a, b = pair
    a.clock = HybridClock(physical=lambda: wall_ms() + 60_000, last=a.clock.now())
    await a.set_password(ALICE, "from-a")
    await _pull(b, a, statesync.USER)
    await b.set_password(ALICE, "from-b")
    await _sync(a, b)
    assert await a.authenticate(ALICE, "from-b") and await b.authenticate(ALICE, "from-b")
    assert await _digests(a) == await _digests(b)
