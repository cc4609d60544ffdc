"""A real SmtpIntake on 127.0.0.1:0 (SMTP and LMTP) backed by a real SqliteStore in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailmux.backend.load import LoadMeter
from mailmux.backend.smtp.server import SmtpIntake
from mailmux.backend.store.interface import MailStore
from tests.backend.smtp.support import ALICE, BOB, DOMAIN, make_config


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MailStore]:
    # Imported here so that the pure header and reply tests beside these need no store.
    from mailmux.backend.store.sqlite import SqliteStore

    async with SqliteStore.open(tmp_path / "mailmux.sqlite3", "a", (DOMAIN,)) as opened:
        await opened.add_user(ALICE, "alice-pw")
        await opened.add_user(BOB, "bob-pw")
        await opened.add_board("news")
        yield opened


@pytest.fixture
def meter() -> LoadMeter:
    return LoadMeter()


@pytest.fixture
async def intake(tmp_path: Path, store: MailStore, meter: LoadMeter) -> AsyncIterator[SmtpIntake]:
    server = SmtpIntake(make_config(tmp_path), store, meter)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
