"""The QRESYNC history (`expunged`) is pruned by age and per-mailbox count; a question about
changes since before the pruned part is still answered completely, from the mailbox itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailmux.backend import config as cfg
from mailmux.backend.store import history
from mailmux.backend.store.sqlite import SqliteStore
from tests.backend.test_config import BASE

ALICE = "alice@example.test"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore.open(tmp_path / "db.sqlite3", "n1", ("example.test",)) as s:
        await s.add_user(ALICE, "alice-pw")
        yield s


async def _inbox(store: SqliteStore) -> int:
    return (await store.get_mailbox(ALICE, "INBOX")).id


async def _entries(store: SqliteStore) -> int:
    return int(await store._read(
        lambda c: c.execute("SELECT count(*) FROM expunged").fetchone()[0]))


async def _expunge_one_by_one(store: SqliteStore, uids: list[int]) -> list[int]:
    """Expunge each UID in its own command; the HIGHESTMODSEQ after each."""
    inbox = await _inbox(store)
    after = []
    for uid in uids:
        await store.expunge(ALICE, inbox, [uid])
        after.append((await store.get_mailbox(ALICE, "INBOX")).highestmodseq)
    return after


async def test_changes_from_before_the_pruned_history_still_name_every_expunge(
    store: SqliteStore,
) -> None:
    for i in range(10):
        await store.append(ALICE, "INBOX", f"Subject: {i}\r\n\r\n{i}\r\n".encode())
    inbox = await _inbox(store)
    start = (await store.get_mailbox(ALICE, "INBOX")).highestmodseq
    after = await _expunge_one_by_one(store, [1, 2, 3, 4, 5])
    # Age: the first three expunges are older than the window.
    removed = await store._write(lambda tx: history.prune(tx.conn, after[2] + 1, 1000))
    assert removed == 3 and await _entries(store) == 2
    assert (await store.changes_since_modseq(ALICE, inbox, start)).expunged == (1, 2, 3, 4, 5)
    # Since a MODSEQ past the pruned part, the history answers alone, exactly.
    assert (await store.changes_since_modseq(ALICE, inbox, after[2])).expunged == (4, 5)
    assert (await store.changes_since_modseq(ALICE, inbox, after[3])).expunged == (5,)


async def test_the_history_stays_within_its_count_per_mailbox(store: SqliteStore) -> None:
    for i in range(12):
        await store.append(ALICE, "INBOX", f"Subject: {i}\r\n\r\n{i}\r\n".encode())
    inbox = await _inbox(store)
    start = (await store.get_mailbox(ALICE, "INBOX")).highestmodseq
    after = await _expunge_one_by_one(store, list(range(1, 11)))
    assert await store.prune_expunged(keep=3600.0, max_rows=3) == 7
    assert await _entries(store) == 3
    assert await store.prune_expunged(keep=3600.0, max_rows=3) == 0  # bounded, and stable
    assert (await store.changes_since_modseq(ALICE, inbox, start)).expunged == tuple(
        range(1, 11))
    assert (await store.changes_since_modseq(ALICE, inbox, after[6])).expunged == (8, 9, 10)


def test_expunge_history_retention_is_configured_and_checked(tmp_path: Path) -> None:
    c = cfg.from_dict({**BASE, "expunged_keep": "24h", "expunged_max": 50}, base=tmp_path)
    assert (c.expunged_keep, c.expunged_max) == (24 * 3600.0, 50)
    with pytest.raises(cfg.ConfigError, match="expunged_max"):
        cfg.from_dict({**BASE, "expunged_max": -1}, base=tmp_path)
