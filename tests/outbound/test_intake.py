"""The node intake's gateway path, in-process with real sockets: AUTH XMAILMUX admits outside
recipients into the outbound queue; nothing else does (no open relay, not over LMTP, not when
the node's queue is disabled)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from mailmux.backend.config import from_dict
from mailmux.backend.load import LoadMeter
from mailmux.backend.smtp.server import SmtpIntake
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.outbound.gateway_auth import MECHANISM, answer
from mailmux.outbound.worker import OutboundWorker

SECRET = "intake-test-secret"
MESSAGE = b"From: alice@example.test\r\nSubject: out\r\n\r\nhello\r\n"


@pytest.fixture
async def intake(tmp_path: Path) -> AsyncIterator[SmtpIntake]:
    config = from_dict({
        "node_id": "a", "data_dir": str(tmp_path), "domains": ["example.test"],
        "pool_secret": SECRET, "listen_imap": "127.0.0.1:0", "listen_smtp": "127.0.0.1:0",
        "listen_lmtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0",
    })
    async with SqliteStore.open(tmp_path / "db.sqlite3", "a", ("example.test",)) as store:
        await store.add_user("alice@example.test", "pw")
        server = SmtpIntake(config, store, LoadMeter())
        server.handler.outbound = OutboundWorker(config, store)
        await server.start()
        try:
            yield server
        finally:
            await server.close()


async def _client(address: tuple[str, int] | None, secret: str = SECRET) -> aiosmtplib.SMTP:
    assert address is not None
    client = aiosmtplib.SMTP(hostname=address[0], port=address[1], timeout=10, start_tls=False)
    await client.connect()
    await client.ehlo()
    challenge = await client.execute_command(b"AUTH", MECHANISM.encode())
    assert challenge.code == 334
    reply = await client.execute_command(
        base64.b64encode(answer(secret.encode(), base64.b64decode(challenge.message))))
    assert reply.code == (235 if secret == SECRET else 535)
    return client


async def test_the_gateway_queues_outside_recipients(intake: SmtpIntake) -> None:
    client = await _client(intake.smtp_address)
    try:
        await client.sendmail("alice@example.test", ["x@remote.test", "alice@example.test"],
                              MESSAGE)
    finally:
        client.close()
    worker = intake.handler.outbound
    assert worker is not None
    [queued] = await worker.queue.queued()
    assert queued.pending == ["x@remote.test"] and queued.sender == "alice@example.test"
    body = await worker.queue.body(queued.id)
    assert body is not None and body.endswith(MESSAGE) and b"Received: " in body


@pytest.mark.parametrize("how", ["wrong secret", "lmtp", "queue disabled"])
async def test_nobody_else_relays(intake: SmtpIntake, how: str) -> None:
    if how == "queue disabled":
        intake.handler.outbound = None
    if how == "lmtp":
        assert intake.lmtp_address is not None
        client = aiosmtplib.SMTP(hostname=intake.lmtp_address[0], port=intake.lmtp_address[1],
                                 timeout=10, start_tls=False)
        await client.connect()
        await client.execute_command(b"LHLO", b"gateway")
        challenge = await client.execute_command(b"AUTH", MECHANISM.encode())
        await client.execute_command(
            base64.b64encode(answer(SECRET.encode(), base64.b64decode(challenge.message))))
    else:
        client = await _client(intake.smtp_address,
                               "not-the-secret" if how == "wrong secret" else SECRET)
    try:
        assert (await client.execute_command(b"MAIL", b"FROM:<alice@example.test>")).code == 250
        refused = await client.execute_command(b"RCPT", b"TO:<x@remote.test>")
        assert refused.code == 550 and refused.message.startswith("5.7.1")
        local = await client.execute_command(b"RCPT", b"TO:<alice@example.test>")
        assert local.code == 250  # the session goes on
    finally:
        client.close()
