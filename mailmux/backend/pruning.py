"""Keeps the node's histories bounded, every PRUNE_INTERVAL seconds: replay ids and runs older
than `replay_keep` or beyond the `replay_max` newest are forgotten (store/replay.py), and so is
the QRESYNC expunge history older than `expunged_keep` or beyond `expunged_max` per mailbox
(store/history.py)."""

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
        config = self.config
        replays = await self.store.prune_replays(config.replay_keep, config.replay_max)
        expunges = await self.store.prune_expunged(config.expunged_keep, config.expunged_max)
        if replays or expunges:
            log.info("pruned %d replay record(s) and %d expunge history entries", replays,
                     expunges)
        return replays + expunges

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # a failed pass must not end pruning for the node's lifetime
                log.exception("pruning the replay and expunge histories failed")
            await asyncio.sleep(PRUNE_INTERVAL)  # the pruning period, not synchronisation
