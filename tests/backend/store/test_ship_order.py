"""Records go to a peer in HLC order across origins (issue 7, "MODSEQ belongs to the change").

Found by the two-gateway imaptest stress under faults ("modseqs differ" between sessions): after
the home moved from one node to another, a replica that lacked the old home's last record got it
from the new home *after* the new home's own, later record (origins were shipped one after the
other, in name order). Arriving below the mailbox's HIGHESTMODSEQ, it got a local MODSEQ, so the
message's MODSEQ differed between that replica and the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailmux.backend.store.sqlite import SqliteStore

DOMAINS = ("example.test",)
ALICE = "alice@example.test"
BODY = b"From: bob@example.test\r\nSubject: order\r\n\r\nin order\r\n"


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[SqliteStore]]:
    async with contextlib.AsyncExitStack() as stack:
        made = [await stack.enter_async_context(
            SqliteStore.open(tmp_path / f"n{i}.sqlite3", f"n{i}", DOMAINS)) for i in range(3)]
        await made[0].add_user(ALICE, "alice-secret-pw")
        for other in made[1:]:
            await sync(made[0], other)
        yield made


async def sync(source: SqliteStore, target: SqliteStore) -> None:
    records = await source.changes_after(await target.positions(), limit=100_000)
    hashes = [str(r.payload["body"]) for r in records if r.kind == "message.add"]
    await target.apply_remote(records, await source.bodies_for(hashes))


async def modseqs(store: SqliteStore) -> tuple[int, dict[int, int]]:
    info = await store.get_mailbox(ALICE, "INBOX")
    return info.highestmodseq, {m.uid: m.modseq for m in await store.messages(ALICE, info.id)}


@pytest.mark.timeout(60)
async def test_a_replica_that_missed_the_old_homes_last_record_gets_it_first(
    stores: list[SqliteStore],
) -> None:
    new_home, old_home, lagging = stores  # the new home's origin sorts first: "n0" < "n1"
    result = await old_home.append(ALICE, "INBOX", BODY)
    for other in (new_home, lagging):
        await sync(old_home, other)
    info = await old_home.get_mailbox(ALICE, "INBOX")
    await old_home.store_flags(ALICE, info.id, [result.uid], "add", ["\\Seen"])
    await sync(old_home, new_home)  # acknowledged by the new home; the lagging one missed it
    info = await new_home.get_mailbox(ALICE, "INBOX")
    await new_home.store_flags(ALICE, info.id, [result.uid], "add", ["\\Flagged"])
    await sync(new_home, lagging)  # both records, from the new home
    assert await modseqs(lagging) == await modseqs(new_home)
    await sync(new_home, old_home)
    assert await modseqs(old_home) == await modseqs(new_home)


@pytest.mark.timeout(60)
async def test_a_limited_batch_keeps_each_origins_records_in_sequence(
    stores: list[SqliteStore],
) -> None:
    first, second, _ = stores
    for _ in range(3):
        await first.append(ALICE, "INBOX", BODY)
        await second.append(ALICE, "INBOX", BODY)
    await sync(first, second)
    await sync(second, first)
    records = await first.changes_after({}, limit=7)
    assert len(records) == 7
    for origin in {r.origin for r in records}:
        seqs = [r.seq for r in records if r.origin == origin]
        assert seqs == list(range(1, len(seqs) + 1))  # a prefix, in order, no gap
    hlcs = [r.hlc for r in records]
    assert hlcs == sorted(hlcs)


@pytest.mark.timeout(60)
async def test_a_store_of_several_messages_keeps_its_one_modseq_on_every_replica(
    stores: list[SqliteStore],
) -> None:
    """Found by the stress under faults ("modseqs differ"): a STORE logs one record per message,
    all with the STORE's MODSEQ; a replica took the first verbatim and, the next ones being no
    longer above its HIGHESTMODSEQ, gave each a local MODSEQ of its own."""
    home, replica, other = stores
    for _ in range(3):
        await home.append(ALICE, "INBOX", BODY)
    info = await home.get_mailbox(ALICE, "INBOX")
    await home.store_flags(ALICE, info.id, [1, 2, 3], "add", ["\\Flagged"])
    await sync(home, replica)
    await sync(replica, other)
    assert await modseqs(replica) == await modseqs(home)
    assert await modseqs(other) == await modseqs(home)
    assert len(set((await modseqs(home))[1].values())) == 1


@pytest.mark.timeout(60)
async def test_a_batch_never_splits_one_changes_records(stores: list[SqliteStore]) -> None:
    home = stores[0]
    for _ in range(4):
        await home.append(ALICE, "INBOX", BODY)
    info = await home.get_mailbox(ALICE, "INBOX")
    await home.store_flags(ALICE, info.id, [1, 2, 3, 4], "add", ["\\Seen"])
    records = await home.changes_after({}, limit=100_000)
    first = next(i for i, r in enumerate(records) if r.kind == "message.flags")
    batch = await home.changes_after({}, limit=first + 1)  # the limit falls inside the STORE
    assert [r.kind for r in batch[first:]] == ["message.flags"] * 4


async def expunge_history(store: SqliteStore) -> list[tuple[int, int]]:
    """(UID, MODSEQ) of the expunge history QRESYNC answers VANISHED (EARLIER) from."""
    info = await store.get_mailbox(ALICE, "INBOX")
    return await store._read(lambda c: [(int(u), int(m)) for u, m in c.execute(
        "SELECT uid, modseq FROM expunged WHERE mailbox_id = ? ORDER BY uid", (info.id,))])


@pytest.mark.timeout(60)
async def test_an_expunge_of_several_messages_has_the_homes_modseqs_in_every_history(
    stores: list[SqliteStore],
) -> None:
    """The expunge history on a replica held local MODSEQs (HIGHESTMODSEQ + 1 at each delete):
    the second and third messages of one EXPUNGE got values the home never gave, so a client
    asking a replica for VANISHED since a MODSEQ was told of other changes than at the home."""
    home, replica, other = stores
    for _ in range(4):
        await home.append(ALICE, "INBOX", BODY)
    info = await home.get_mailbox(ALICE, "INBOX")
    await home.store_flags(ALICE, info.id, [1, 2, 3], "add", ["\\Deleted"])
    await home.expunge(ALICE, info.id, [1, 2, 3])
    await sync(home, replica)
    await sync(replica, other)
    history = await expunge_history(home)
    assert [uid for uid, _ in history] == [1, 2, 3]
    assert await expunge_history(replica) == history
    assert await expunge_history(other) == history
    assert await modseqs(replica) == await modseqs(home)
