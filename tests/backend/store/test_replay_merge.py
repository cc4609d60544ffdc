"""Two runs of one replay id (a hung node continued after the gateway replayed its change
elsewhere) settle on every replica alike: one copy, one winner, one answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mailmux.backend.errors import Unavailable
from mailmux.backend.store.replay import REPLAY, SMTP_SCOPE, Replayed
from mailmux.backend.store.sqlite import SqliteStore

DOMAINS = ("example.test",)
ALICE = "alice@example.test"
BODY = b"From: bob@example.test\r\nSubject: once\r\n\r\nonly one of me\r\n"


@contextlib.contextmanager
def replay_id(value: str) -> Iterator[None]:
    token = REPLAY.set(value)
    try:
        yield
    finally:
        REPLAY.reset(token)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[SqliteStore]]:
    """Four replicas of one pool; alice made on the first and shipped to the others."""
    async with contextlib.AsyncExitStack() as stack:
        made = [await stack.enter_async_context(
            SqliteStore.open(tmp_path / f"n{i}.sqlite3", f"n{i}", DOMAINS)) for i in range(4)]
        for i, store in enumerate(made):
            store.uid_slot = (i, 4)
        await made[0].add_user(ALICE, "alice-secret-pw")
        for other in made[1:]:
            await sync(made[0], other)
        yield made


async def sync(source: SqliteStore, target: SqliteStore) -> None:
    records = await source.changes_after(await target.positions(), limit=100_000)
    hashes = [str(r.payload["body"]) for r in records if r.kind == "message.add"]
    await target.apply_remote(records, await source.bodies_for(hashes))


async def inbox(store: SqliteStore) -> list[tuple[int, str]]:
    info = await store.get_mailbox(ALICE, "INBOX")
    return [(m.uid, m.guid) for m in await store.messages(ALICE, info.id)]


async def settle(stores: list[SqliteStore]) -> None:
    for _ in range(2):
        for source in stores:
            for target in stores:
                if source is not target:
                    await sync(source, target)


@pytest.mark.timeout(60)
async def test_two_appends_under_one_replay_id_leave_one_copy_everywhere(
    stores: list[SqliteStore],
) -> None:
    hung, replayed, early, late = stores
    with replay_id("g1-7"):
        first = await hung.append(ALICE, "INBOX", BODY)  # made, never shipped, never answered
        second = await replayed.append(ALICE, "INBOX", BODY)  # the gateway's replay elsewhere
    assert first.uid != second.uid
    # The other replicas hear of the two runs in opposite orders.
    await sync(hung, early)
    await sync(replayed, early)
    await sync(replayed, late)
    await sync(hung, late)
    await settle(stores)
    winner = {"uidvalidity": second.uidvalidity, "uid": second.uid}  # the later run wins
    for store in stores:
        assert await inbox(store) == [(second.uid, second.guid)], store.origin
        assert await store.replay_answer(ALICE, "g1-7") == winner, store.origin
    # and a third replay anywhere is answered, not done
    with replay_id("g1-7"), pytest.raises(Replayed) as again:
        await early.append(ALICE, "INBOX", BODY)
    assert again.value.answer == winner


@pytest.mark.timeout(60)
async def test_a_replayed_smtp_transaction_keeps_its_guid_once_under_one_uid(
    stores: list[SqliteStore],
) -> None:
    hung, replayed, early, late = stores
    with replay_id("g2-1"):
        await hung.deliver([ALICE], BODY, "guid-of-the-transaction")
        await replayed.deliver([ALICE], BODY, "guid-of-the-transaction")
    await sync(hung, early)
    await sync(replayed, early)
    await sync(replayed, late)
    await sync(hung, late)
    await settle(stores)
    shown = [await inbox(store) for store in stores]
    assert all(held == shown[0] for held in shown), shown
    assert len(shown[0]) == 1 and shown[0][0][1] == "guid-of-the-transaction", shown
    answers = [await store.replay_answer(SMTP_SCOPE, "g2-1") for store in stores]
    assert answers == [{"guid": "guid-of-the-transaction"}] * 4


@pytest.mark.timeout(60)
async def test_a_run_its_origin_undid_never_takes_the_other_copy_with_it(
    stores: list[SqliteStore],
) -> None:
    """The hung node's run, undone when it was continued (no W copies in time), meets the
    replay that answered the client: the replay's message stays, on every replica."""
    hung, replayed, early, late = stores

    async def no_copies(body: bytes | None, seq: int) -> None:
        await sync(hung, early)  # one replica heard of the run before it was undone
        raise Unavailable("no copies in time")

    hung.copies_hook = no_copies
    with replay_id("g3-2"):
        with pytest.raises(Unavailable):
            await hung.append(ALICE, "INBOX", BODY)
        hung.copies_hook = None
        second = await replayed.append(ALICE, "INBOX", BODY)
    await sync(replayed, early)
    await sync(replayed, late)
    await settle(stores)
    winner = {"uidvalidity": second.uidvalidity, "uid": second.uid}
    for store in stores:
        assert await inbox(store) == [(second.uid, second.guid)], store.origin
        assert await store.replay_answer(ALICE, "g3-2") == winner, store.origin
