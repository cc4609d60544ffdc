"""A change wakes the sessions that must hear of it, and not the one that made it.

Every commit used to wake every session on the mailbox, its own too, and each woken session
then ran a catch-up read at its next command: a client sending STOREs paid a read per STORE
for news it had just made itself. Counted here on a real store and a real IMAP server (in this
process, so the store's statements and wake-ups can be counted), driven over a real socket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailmux.backend.store.sqlite import SqliteStore
from tests.backend.imap.test_query_counts import rig

pytestmark = pytest.mark.timeout(300)


async def test_a_store_wakes_the_other_session_only_and_the_next_store_reads_nothing(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, 50) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        before = r.store.wakes
        await a.command("UID STORE 7 +FLAGS.SILENT (\\Flagged)")
        assert r.store.wakes == before + 1  # b's feed; not a's
        # a's next STORE starts without a catch-up read: only the change's own statements.
        statements, _ = await r.count(a, "UID STORE 8 +FLAGS.SILENT (\\Flagged)")
        assert not any("highestmodseq FROM mailboxes" in s for s in r.counter.statements), (
            r.counter.statements)
        assert statements <= 16
        assert r.store.wakes == before + 2
        statements, lines = await r.count(a, "NOOP")
        assert statements == 0 and len(lines) == 1, lines
        # b hears of both changes, once each.
        _, lines = await r.count(b, "NOOP")
        told = sorted(x.split(b" ")[1] for x in lines if b" FETCH " in x)
        assert told == [b"7", b"8"], lines
        # An implicit \Seen (FETCH BODY[]) is reported by its FETCH: a is not woken by it.
        _, lines = await r.count(a, "FETCH 4 (BODY[])")  # message 4 starts unseen
        assert b"\\Seen))" in b"".join(lines), lines
        assert r.store.wakes == before + 3
        statements, _ = await r.count(a, "NOOP")
        assert statements == 0


async def test_a_session_still_hears_the_others_changes_after_its_own(tmp_path: Path) -> None:
    async with rig(tmp_path, 50) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        for uid in (4, 5, 6):
            await a.command(f"UID STORE {uid} +FLAGS.SILENT ($mine)")
        # b's STORE tells b of a's changes before its own answer
        lines = await b.command("UID STORE 9 +FLAGS.SILENT ($theirs)")
        assert sorted(x.split(b" ")[1] for x in lines if b" FETCH " in x) == [b"4", b"5", b"6"]
        lines = await a.command("NOOP")
        fetches = [x for x in lines if b" FETCH " in x]
        # b's change only: a's own were told (or silenced) when a made them.
        assert len(fetches) == 1 and fetches[0].startswith(b"* 9 FETCH (FLAGS ("), lines
        assert b"$theirs" in fetches[0]


async def test_a_commit_holding_two_sessions_changes_wakes_both(tmp_path: Path) -> None:
    """The writer commits several sessions' jobs at once: each must still hear of the
    others' changes in that commit."""
    async with SqliteStore.open(tmp_path / "s.sqlite3", "n", ("example.test",)) as store:
        a, b, c = store.listen(1), store.listen(1), store.listen(1)
        store._notify({1: {a, b}})
        assert (a.qsize(), b.qsize(), c.qsize()) == (1, 1, 1)
        store._notify({1: {a}})
        assert (a.qsize(), b.qsize(), c.qsize()) == (1, 2, 2)
        store._notify({1: {None}, 2: {b}})  # not a session's change; another mailbox
        assert (a.qsize(), b.qsize(), c.qsize()) == (2, 3, 3)
        await asyncio.sleep(0)
