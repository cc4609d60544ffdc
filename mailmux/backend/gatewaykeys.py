"""The gateway keys a running node accepts, kept in memory and re-read from the store.

Control packets are checked synchronously (a datagram costs no task before its MAC is good),
so the live keys are held in a dict. It is re-read every `REFRESH` seconds: keys issued or
revoked with the CLI (which writes the node's database directly) or arriving from peers take
effect within that time, so a revoked key stops working on every node within seconds of the
revocation reaching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable

from mailmux.backend.errors import BackendError
from mailmux.protocol.control.keys import Keyring

log = logging.getLogger(__name__)

REFRESH = 0.5


class GatewayKeys:
    def __init__(self, pool_secret: bytes,
                 load: Callable[[], Awaitable[dict[str, bytes]]] | None = None,
                 refresh: float = REFRESH) -> None:
        self._load = load
        self._refresh = refresh
        self._live: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self.keyring = Keyring(pool_secret, self._live.get)

    def secret(self, name: str) -> bytes | None:
        return self._live.get(name)

    async def start(self) -> None:
        await self.reload()
        if self._load is not None:
            self._task = asyncio.create_task(self._reload_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self) -> None:
        if self._load is None:
            return
        live = await self._load()
        if live != self._live:
            gone = sorted(set(self._live) - set(live))
            if gone:
                log.info("gateway keys no longer accepted: %s", ", ".join(gone))
            self._live.clear()  # in place: the keyring's lookup holds this dict
            self._live.update(live)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)  # a polling period, not synchronisation
            try:
                await self.reload()
            except (BackendError, sqlite3.Error) as exc:
                log.warning("gateway keys: cannot re-read the store: %s", exc)
