"""When the intake says 250, what a store failure looks like, and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from mailmux.backend.errors import UserNotFound
from mailmux.backend.load import LoadMeter
from mailmux.backend.smtp.server import SmtpIntake
from mailmux.backend.store.interface import MailStore
from tests.backend.smtp.support import ALICE, WrappedStore, make_config, stored, until

MESSAGE = b"Subject: durable\r\n\r\nbody\r\n"


@pytest.fixture
def wrapped(store: MailStore) -> WrappedStore:
    return WrappedStore(store)


@pytest.fixture
async def intake(
    tmp_path: Path, wrapped: WrappedStore, meter: LoadMeter
) -> AsyncIterator[SmtpIntake]:
    server = SmtpIntake(make_config(tmp_path), wrapped.as_store(), meter)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def connected(intake: SmtpIntake) -> aiosmtplib.SMTP:
    assert intake.smtp_address is not None
    host, port = intake.smtp_address
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=10, start_tls=False)
    await client.connect()
    return client


async def test_250_only_after_the_store_returned(
    intake: SmtpIntake, wrapped: WrappedStore, store: MailStore, meter: LoadMeter
) -> None:
    wrapped.gate = asyncio.Event()
    client = await connected(intake)
    sending = asyncio.create_task(client.sendmail("s@example.org", [ALICE], MESSAGE))
    await until(lambda: wrapped.waiting == 1)
    assert not sending.done()
    assert meter.transactions_in_flight == 1
    wrapped.gate.set()
    _, reply = await sending
    assert "queued as" in reply
    assert meter.transactions_in_flight == 0
    assert len(await stored(store, ALICE)) == 1
    await client.quit()


async def test_store_failure_is_451_logged_and_the_session_continues(
    intake: SmtpIntake, wrapped: WrappedStore, caplog: pytest.LogCaptureFixture
) -> None:
    wrapped.fail_for[ALICE] = RuntimeError("disk on fire")
    client = await connected(intake)
    with caplog.at_level(logging.ERROR), pytest.raises(aiosmtplib.SMTPDataError) as error:
        await client.sendmail("s@example.org", [ALICE], MESSAGE)
    assert error.value.code == 451
    assert error.value.message.startswith("4.3.0 ")
    assert "disk on fire" in caplog.text and "store failed delivering" in caplog.text
    assert (await client.noop()).code == 250
    await client.quit()


async def test_backend_error_gives_its_own_reply(
    intake: SmtpIntake, wrapped: WrappedStore
) -> None:
    wrapped.fail_for[ALICE] = UserNotFound()  # deleted between RCPT and DATA
    client = await connected(intake)
    with pytest.raises(aiosmtplib.SMTPDataError) as error:
        await client.sendmail("s@example.org", [ALICE], MESSAGE)
    assert (error.value.code, error.value.message[:6]) == (550, "5.1.1 ")
    await client.quit()


async def test_close_lets_a_delivery_finish_then_says_421(
    intake: SmtpIntake, wrapped: WrappedStore, store: MailStore, meter: LoadMeter
) -> None:
    wrapped.gate = asyncio.Event()
    assert intake.smtp_address is not None
    idle_reader, idle_writer = await asyncio.open_connection(*intake.smtp_address)
    assert (await idle_reader.readline()).startswith(b"220 ")
    busy = await connected(intake)
    sending = asyncio.create_task(busy.sendmail("s@example.org", [ALICE], MESSAGE))
    await until(lambda: wrapped.waiting == 1)
    closing = asyncio.create_task(intake.close())
    await until(lambda: intake.handler.closing)
    assert not closing.done()
    wrapped.gate.set()
    _, reply = await sending  # the delivery in progress is answered...
    assert "queued as" in reply
    await closing
    # ...and everyone else is told to come back later.
    assert (await idle_reader.readline()).startswith(b"421 4.3.2 ")
    assert await idle_reader.read() == b""
    idle_writer.close()
    assert meter.sessions == 0
    assert len(await stored(store, ALICE)) == 1
