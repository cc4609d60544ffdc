"""Replay ids (and their runs) are pruned by age and by count: the tables stay bounded, and a
replay within the window still gets the original answer and makes nothing new."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailmux.backend import config as cfg
from mailmux.backend.store import replay
from mailmux.backend.store.replay import REPLAY, Replayed
from mailmux.backend.store.sqlite import SqliteStore
from tests.backend.test_config import BASE

ALICE = "alice@example.test"
BODY = b"Subject: r\r\n\r\nreplayed\r\n"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore.open(tmp_path / "db.sqlite3", "n1", ("example.test",)) as s:
        await s.add_user(ALICE, "alice-pw")
        yield s


async def _append(store: SqliteStore, replay_id: str) -> dict[str, Any]:
    token = REPLAY.set(replay_id)
    try:
        result = await store.append(ALICE, "INBOX", BODY)
        return {"uidvalidity": result.uidvalidity, "uid": result.uid}
    except Replayed as exc:
        return {"replayed": exc.answer}
    finally:
        REPLAY.reset(token)


async def _count(store: SqliteStore, table: str) -> int:
    return int(await store._read(lambda c: c.execute(f"SELECT count(*) FROM {table}")
                                 .fetchone()[0]))


async def test_the_newest_replays_within_the_count_still_answer_as_the_original(
    store: SqliteStore,
) -> None:
    answers = [await _append(store, f"gw-{i}") for i in range(30)]
    assert await _count(store, "replays") == 30
    assert await store.prune_replays(keep=3600.0, max_rows=10) > 0
    assert await _count(store, "replays") == 10
    assert await _count(store, "replay_runs") == 10
    messages = (await store.get_mailbox(ALICE, "INBOX")).messages
    for i in range(20, 30):  # kept: answered as the original, nothing stored again
        assert await _append(store, f"gw-{i}") == {"replayed": answers[i]}
    assert (await store.get_mailbox(ALICE, "INBOX")).messages == messages
    assert await store.replay_answer(ALICE, "gw-0") is None  # forgotten: the oldest
    # Pruning again keeps the table at its bound; nothing within it goes.
    assert await store.prune_replays(keep=3600.0, max_rows=10) == 0


async def test_replays_older_than_the_window_are_forgotten_and_newer_ones_kept(
    store: SqliteStore,
) -> None:
    old = [await _append(store, f"old-{i}") for i in range(5)]
    boundary = store.clock.now()
    new = [await _append(store, f"new-{i}") for i in range(5)]
    removed = await store._write(lambda tx: replay.prune(tx.conn, boundary, 1000))
    assert removed == 10  # five replays, five runs
    for i in range(5):
        assert await store.replay_answer(ALICE, f"old-{i}") is None
        assert await _append(store, f"new-{i}") == {"replayed": new[i]}
    assert old  # (made, then forgotten)
    # The store's own pass with a window of an hour keeps all of these (made just now).
    assert await store.prune_replays(keep=3600.0, max_rows=1000) == 0


async def test_pruning_runs_in_short_transactions(store: SqliteStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "PRUNE_BATCH", 4)
    for i in range(13):
        await _append(store, f"gw-{i}")
    commits = store.commits
    assert await store.prune_replays(keep=3600.0, max_rows=1) == 24  # 12 ids, 12 runs
    assert await _count(store, "replays") == 1
    assert store.commits - commits >= 3  # 12 rows a table, 4 per transaction


def test_replay_retention_is_configured_and_checked(tmp_path: Path) -> None:
    c = cfg.from_dict({**BASE, "replay_keep": "48h", "replay_max": 500}, base=tmp_path)
    assert (c.replay_keep, c.replay_max) == (48 * 3600.0, 500)
    default = cfg.from_dict(dict(BASE), base=tmp_path)
    assert default.replay_keep == 7 * 24 * 3600.0 and default.replay_max == 1_000_000
    with pytest.raises(cfg.ConfigError, match="replay_max"):
        cfg.from_dict({**BASE, "replay_max": 0}, base=tmp_path)
    with pytest.raises(cfg.ConfigError, match="replay_keep"):
        cfg.from_dict({**BASE, "replay_keep": "soon"}, base=tmp_path)
