"""Helpers shared by the intake tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

from mailmux.backend.config import BackendConfig
from mailmux.backend.store.interface import AppendResult, MailStore

DOMAIN = "example.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"
MAX_SIZE = 8192


def make_config(tmp_path: Path, **changes: object) -> BackendConfig:
    config = BackendConfig(
        node_id="a",
        data_dir=tmp_path,
        domains=(DOMAIN,),
        pool_secret=b"test-pool-secret",
        listen_imap=("127.0.0.1", 0),
        listen_smtp=("127.0.0.1", 0),
        listen_control=("127.0.0.1", 0),
        listen_lmtp=("127.0.0.1", 0),
        max_message_size=MAX_SIZE,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


async def stored(store: MailStore, user: str, mailbox: str = "INBOX") -> list[tuple[str, bytes]]:
    """(guid, body) of every message in the mailbox, in UID order."""
    info = await store.get_mailbox(user, mailbox)
    metas = await store.messages(user, info.id)
    return [(m.guid, await store.body(info.id, m.uid)) for m in metas]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll (yielding to the loop) until condition() holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


class WrappedStore:
    """A real store whose deliver() a test can hold at a gate or make fail."""

    def __init__(self, store: MailStore) -> None:
        self.store = store
        self.gate: asyncio.Event | None = None
        self.waiting = 0
        self.fail_for: dict[str, BaseException] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def deliver(
        self, recipients: Sequence[str], body: bytes, guid: str
    ) -> list[AppendResult]:
        for recipient in recipients:
            if recipient in self.fail_for:
                raise self.fail_for[recipient]
        if self.gate is not None:
            self.waiting += 1
            await self.gate.wait()
        return await self.store.deliver(recipients, body, guid)

    def as_store(self) -> MailStore:
        return cast(MailStore, self)
