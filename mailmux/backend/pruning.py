"""Keeps the node's histories bounded: replay ids and runs older than `replay_keep` or beyond
the `replay_max` newest are forgotten, every PRUNE_INTERVAL seconds (store/replay.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mailmux.backend.config import BackendConfig
from mailmux.backend.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 300.0


class HistoryPruner:
    def __init__(self, config: BackendConfig, store: SqliteStore) -> None:
        self.config = config
        self.store = store
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def prune(self) -> int:
        removed = await self.store.prune_replays(self.config.replay_keep, self.config.replay_max)
        if removed:
            log.info("pruned %d replay record(s)", removed)
        return removed

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # a failed pass must not end pruning for the node's lifetime
                log.exception("pruning the replay history failed")
            await asyncio.sleep(PRUNE_INTERVAL)  # the pruning period, not synchronisation
