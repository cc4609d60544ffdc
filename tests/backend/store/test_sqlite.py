"""The SQLite store on real database files."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailmux.backend.errors import (
    CannotDo,
    InvalidUser,
    MailboxExists,
    MailboxNotFound,
    NotPermitted,
    Unavailable,
    UserExists,
    UserNotFound,
)
from mailmux.backend.store.hlc import HybridClock
from mailmux.backend.store.replay import REPLAY, Replayed
from mailmux.backend.store.sqlite import SqliteStore

DOMAINS = ("example.test",)
ALICE, BOB = "alice@example.test", "bob@example.test"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore.open(tmp_path / "db.sqlite3", "n1", DOMAINS) as s:
        await s.add_user(ALICE, "alice-secret-pw")
        await s.add_user(BOB, "bob-pw")
        yield s


async def test_users_and_argon2id(store: SqliteStore, tmp_path: Path) -> None:
    assert await store.list_users() == [ALICE, BOB]
    assert await store.authenticate(ALICE, "alice-secret-pw")
    assert await store.authenticate("ALICE@example.test", "alice-secret-pw")
    assert not await store.authenticate(ALICE, "wrong")
    assert not await store.authenticate("nobody@example.test", "x")
    with pytest.raises(UserExists):
        await store.add_user(ALICE, "x")
    with pytest.raises(InvalidUser):
        await store.add_user("eve@elsewhere.example", "x")
    await store.set_password(BOB, "new-pw")
    assert await store.authenticate(BOB, "new-pw") and not await store.authenticate(BOB, "bob-pw")
    await store.delete_user(BOB)
    assert not await store.has_user(BOB)
    with pytest.raises(UserNotFound):
        await store.delete_user(BOB)
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"$argon2id$" in data and b"alice-secret-pw" not in data


async def test_default_and_managed_mailboxes(store: SqliteStore) -> None:
    boxes = {m.name: m for m in await store.list_mailboxes(ALICE)}
    assert set(boxes) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert boxes["Sent"].special_use == "\\Sent" and boxes["INBOX"].subscribed
    await store.create_mailbox(ALICE, "Work/2026")
    await store.create_mailbox(ALICE, "Work")
    with pytest.raises(MailboxExists):
        await store.create_mailbox(ALICE, "Work")
    info = await store.get_mailbox(ALICE, "Work/2026")
    await store.rename_mailbox(ALICE, "Work", "Jobs")
    renamed = await store.get_mailbox(ALICE, "Jobs/2026")
    assert renamed.uidvalidity == info.uidvalidity
    with pytest.raises(MailboxNotFound):
        await store.get_mailbox(ALICE, "Work/2026")
    with pytest.raises(CannotDo):
        await store.delete_mailbox(ALICE, "INBOX")
    with pytest.raises(NotPermitted):
        await store.create_mailbox(ALICE, "bad*name")
    await store.delete_mailbox(ALICE, "Jobs/2026")
    with pytest.raises(MailboxNotFound):
        await store.delete_mailbox(ALICE, "Jobs/2026")
    await store.set_subscribed(ALICE, "Jobs", True)
    assert (await store.get_mailbox(ALICE, "Jobs")).subscribed


async def test_rename_inbox_moves_its_messages(store: SqliteStore) -> None:
    await store.append(ALICE, "INBOX", b"Subject: a\r\n\r\nx\r\n")
    await store.rename_mailbox(ALICE, "INBOX", "Old")
    assert (await store.get_mailbox(ALICE, "INBOX")).messages == 0
    assert (await store.get_mailbox(ALICE, "Old")).messages == 1


async def test_append_uids_and_guid_dedup(store: SqliteStore) -> None:
    results = [await store.append(ALICE, "INBOX", f"Subject: {i}\r\n\r\n".encode())
               for i in range(3)]
    assert [r.uid for r in results] == [1, 2, 3]
    first = await store.append(ALICE, "Archive", b"x")
    again = await store.append(ALICE, "Archive", b"x")
    assert again.uid == first.uid + 1 and again.guid != first.guid
    info = await store.get_mailbox(ALICE, "INBOX")
    assert (info.messages, info.uidnext, info.unseen) == (3, 4, 3)
    body = await store.body(info.id, 2)
    assert body == b"Subject: 1\r\n\r\n"


async def test_deliver_to_users_and_boards(store: SqliteStore) -> None:
    await store.add_board("news")
    results = await store.deliver([ALICE, "board+news@example.test"], b"Subject: d\r\n\r\n", "d1")
    assert [r.uid for r in results] == [1, 1]
    with pytest.raises(UserNotFound):
        await store.deliver([BOB, "nobody@example.test"], b"x", "d2")
    assert (await store.get_mailbox(BOB, "INBOX")).messages == 0  # all or nothing
    board = await store.get_mailbox(BOB, "Boards/news")
    assert board.is_board and board.unseen == 1
    await store.store_flags(ALICE, board.id, [1], "add", ["\\Seen", "\\Flagged"])
    assert (await store.get_mailbox(ALICE, "Boards/news")).unseen == 0
    assert (await store.get_mailbox(BOB, "Boards/news")).unseen == 1
    bob_view = (await store.messages(BOB, board.id))[0]
    assert bob_view.flags == frozenset()  # alice's flags are hers alone (finding 10)
    alice_view = (await store.messages(ALICE, board.id))[0]
    assert alice_view.flags == {"\\Seen", "\\Flagged"}
    with pytest.raises(NotPermitted):
        await store.expunge(BOB, board.id, [1])
    assert await store.list_boards() == ["news"] and await store.has_board("news")


async def test_flags_modseq_and_unchangedsince(store: SqliteStore) -> None:
    for i in range(2):
        await store.append(ALICE, "INBOX", f"m{i}".encode())
    box = await store.get_mailbox(ALICE, "INBOX")
    result = await store.store_flags(ALICE, box.id, [1, 2], "add", ["\\Seen"])
    assert [c.uid for c in result.changed] == [1, 2]
    modseq = result.changed[0].modseq
    assert modseq > box.highestmodseq
    unchanged = await store.store_flags(ALICE, box.id, [1], "add", ["\\Seen"])
    assert unchanged.changed == ()
    stale = await store.store_flags(ALICE, box.id, [1, 2], "replace", ["$x"],
                                    unchanged_since=modseq - 1)
    assert stale.failed_unchanged_since == (1, 2) and stale.changed == ()
    removed = await store.store_flags(ALICE, box.id, [2], "remove", ["\\Seen"])
    assert removed.changed[0].flags == frozenset() and removed.changed[0].modseq > modseq


async def test_expunge_copy_move(store: SqliteStore) -> None:
    for i in range(3):
        await store.append(ALICE, "INBOX", f"m{i}".encode(), flags=["\\Flagged"])
    box = await store.get_mailbox(ALICE, "INBOX")
    assert await store.expunge(ALICE, box.id, [2, 9]) == [2]
    copied = await store.copy(ALICE, box.id, [1, 3], "Archive")
    archive = await store.get_mailbox(ALICE, "Archive")
    assert copied.uidvalidity == archive.uidvalidity and copied.pairs == ((1, 1), (3, 2))
    moved = await store.move(ALICE, box.id, [1], "Trash")
    assert moved.pairs == ((1, 1),)
    assert [m.uid for m in await store.messages(ALICE, box.id)] == [3]
    with pytest.raises(MailboxNotFound):
        await store.copy(ALICE, box.id, [3], "Nowhere")


async def test_change_log_is_written_with_each_mutation(store: SqliteStore) -> None:
    before = await store.changes_since(store.origin, 0, 10_000)
    await store.append(ALICE, "INBOX", b"x")
    with pytest.raises(MailboxExists):
        await store.create_mailbox(ALICE, "Sent")  # fails: no record may remain
    after = await store.changes_since(store.origin, before[-1].seq)
    assert [c.kind for c in after] == ["message.add"]
    assert after[0].payload["uid"] == 1 and after[0].hlc > before[-1].hlc
    seqs = [c.seq for c in before + after]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_change_feed_wakes_listeners(store: SqliteStore) -> None:
    box = await store.get_mailbox(ALICE, "INBOX")
    queue = store.listen(box.id)
    task = asyncio.create_task(store.append(ALICE, "INBOX", b"x"))
    assert await asyncio.wait_for(queue.get(), 5) == box.id
    await task
    store.unlisten(box.id, queue)


async def test_group_commit_shares_fsyncs(store: SqliteStore) -> None:
    commits = store.commits
    await asyncio.gather(*(store.append(ALICE, "Archive", f"m{i}".encode()) for i in range(200)))
    assert (await store.get_mailbox(ALICE, "Archive")).messages == 200
    assert store.commits - commits < 200


def test_acknowledged_append_survives_process_death(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    script = f"""
import asyncio, os
from pathlib import Path
from mailmux.backend.store.sqlite import SqliteStore
async def main():
    async with SqliteStore.open(Path({str(db)!r}), "n1", ("example.test",)) as s:
        await s.add_user("alice@example.test", "pw")
        await s.append("alice@example.test", "INBOX", b"Subject: kept\\r\\n\\r\\n")
        os._exit(0)  # no clean close: only what was committed survives
asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)

    async def check() -> int:
        async with SqliteStore.open(db, "n1", DOMAINS) as s:
            return (await s.get_mailbox(ALICE, "INBOX")).messages

    assert asyncio.run(check()) == 1


def test_hybrid_clock_is_monotonic_and_follows_peers() -> None:
    wall = [1_000]
    clock = HybridClock(physical=lambda: wall[0])
    first = clock.now()
    wall[0] = 500  # the wall clock steps back
    assert clock.now() > first
    remote = (5_000 << 16) + 7
    assert clock.update(remote) > remote and clock.now() > remote


async def test_identical_appends_are_two_messages_and_a_replay_id_is_one(
    store: SqliteStore,
) -> None:
    """RFC 3501: every APPEND makes a message; only a gateway replay id makes one of two."""
    first = await store.append(ALICE, "Drafts", b"Subject: draft\r\n\r\nx\r\n")
    second = await store.append(ALICE, "Drafts", b"Subject: draft\r\n\r\nx\r\n")
    assert second.uid == first.uid + 1 and not second.duplicate
    token = REPLAY.set("gw-1")
    try:
        original = await store.append(ALICE, "Drafts", b"Subject: draft\r\n\r\nx\r\n")
        with pytest.raises(Replayed) as replayed:
            await store.append(ALICE, "Drafts", b"Subject: draft\r\n\r\nx\r\n")
    finally:
        REPLAY.reset(token)
    assert replayed.value.answer == {"uidvalidity": original.uidvalidity, "uid": original.uid}
    assert (await store.get_mailbox(ALICE, "Drafts")).messages == 3
    assert await store.replay_answer(ALICE, "gw-1") == replayed.value.answer
    assert await store.replay_answer(BOB, "gw-1") is None  # ids are per user



async def test_login_cache_skips_argon2_for_repeat_logins_and_forgets_changes(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailmux.backend.store import sqlite as sqlite_module

    verified: list[str] = []
    real = sqlite_module.verify_password

    async def counting(stored: str | None, password: str) -> bool:
        verified.append(password)
        return await real(stored, password)

    monkeypatch.setattr(sqlite_module, "verify_password", counting)
    assert await store.authenticate(ALICE, "alice-secret-pw")
    assert await store.authenticate(ALICE.upper(), "alice-secret-pw")
    assert len(verified) == 1  # the second login was a cache hit
    assert not await store.authenticate(ALICE, "wrong-pw")  # a miss: verified, not cached
    assert not await store.authenticate(ALICE, "wrong-pw")
    assert len(verified) == 3
    await store.set_password(ALICE, "new-pw")
    assert not await store.authenticate(ALICE, "alice-secret-pw")
    assert await store.authenticate(ALICE, "new-pw")
    # A password change that arrives by replication changes the stored hash: no stale hit.
    assert await store.authenticate(ALICE, "new-pw")
    before = len(verified)
    store.logins.remember(ALICE, "stale-pw", "not-the-stored-hash")
    assert not await store.authenticate(ALICE, "stale-pw")
    assert len(verified) == before + 1
    await store.delete_user(BOB)
    assert not await store.authenticate(BOB, "bob-pw")
    store.logins.ttl = 0
    assert await store.authenticate(ALICE, "new-pw") and await store.authenticate(ALICE, "new-pw")


async def test_close_waits_for_reads_running_in_threads(tmp_path: Path) -> None:
    """SIGINT once crashed a node: the store closed a reader connection that a worker thread
    was still stepping. Closing now waits for running reads and refuses new ones."""
    store = SqliteStore(tmp_path / "db.sqlite3", "n1", DOMAINS)
    await store._start()
    started, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> int:
        started.set()
        release.wait(10)
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    reading = asyncio.create_task(store._read(slow))
    assert await asyncio.to_thread(started.wait, 10)
    closing = asyncio.create_task(store._close())
    deadline = asyncio.get_running_loop().time() + 10
    while not store._closed:
        assert asyncio.get_running_loop().time() < deadline, "close never began"
        await asyncio.sleep(0.01)
    assert not closing.done()  # still waiting for the read
    release.set()
    assert await reading == 0
    await asyncio.wait_for(closing, 10)
    with pytest.raises(Unavailable):
        await store.list_users()
