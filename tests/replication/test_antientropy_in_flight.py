"""Anti-entropy leaves to the log what the log is still bringing (issue 7, "MODSEQ belongs to
the change").

Found by the two-gateway imaptest stress under faults ("modseqs differ" between sessions):
every restart reconnects the peer links, and the digest comparison that follows ran while the
restarted node still lacked records. It merged the peer's rows with a MODSEQ of its own; the
records, arriving next, could not bring the message back to their MODSEQ, so sessions on the two
nodes saw different MODSEQs. Now a mailbox is merged only when both sides hold the same records.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailmux.backend.store.sqlite import SqliteStore
from mailmux.replication import antientropy

DOMAINS = ("example.test",)
ALICE = "alice@example.test"
BODY = b"From: bob@example.test\r\nSubject: digest\r\n\r\ndigest\r\n"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    async with contextlib.AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(
            SqliteStore.open(tmp_path / f"{n}.sqlite3", n, DOMAINS)) for n in "ab"]
        await a.add_user(ALICE, "alice-secret-pw")
        await a.append(ALICE, "INBOX", BODY)
        await sync(a, b)
        yield a, b


async def sync(source: SqliteStore, target: SqliteStore) -> None:
    records = await source.changes_after(await target.positions(), limit=100_000)
    hashes = [str(r.payload["body"]) for r in records if r.kind == "message.add"]
    await target.apply_remote(records, await source.bodies_for(hashes))


async def state(store: SqliteStore) -> tuple[int, list[tuple[int, frozenset[str], int]]]:
    info = await store.get_mailbox(ALICE, "INBOX")
    return info.highestmodseq, [(m.uid, m.flags, m.modseq)
                                for m in await store.messages(ALICE, info.id)]


@pytest.mark.timeout(60)
async def test_a_digest_pass_while_records_are_in_flight_leaves_modseqs_to_them(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    info = await a.get_mailbox(ALICE, "INBOX")
    await a.store_flags(ALICE, info.id, [1], "add", ["\\Seen"])  # b has not got it yet

    async def ask(message: dict[str, Any]) -> dict[str, Any]:
        answer = await antientropy.answer(a, message)
        assert answer is not None
        return answer

    before = await state(b)
    assert await antientropy.reconcile(b, ask, "a") == 0  # b lacks a's record: not now
    assert await state(b) == before
    await sync(a, b)
    assert await state(b) == await state(a)  # the record's own MODSEQ, as on a


@pytest.mark.timeout(60)
async def test_a_difference_behind_the_logs_back_is_still_repaired(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair

    async def ask(message: dict[str, Any]) -> dict[str, Any]:
        answer = await antientropy.answer(a, message)
        assert answer is not None
        return answer

    # Both hold the same records; b lost its row behind the log's back.
    await b._write(lambda tx: tx.conn.execute("DELETE FROM messages"))
    assert await antientropy.reconcile(b, ask, "a") == 1
    assert [m[:2] for m in (await state(b))[1]] == [m[:2] for m in (await state(a))[1]]
