"""LMTP (RFC 2033): one reply per accepted recipient after DATA."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailmux.backend.errors import ServerError
from mailmux.backend.load import LoadMeter
from mailmux.backend.smtp.server import SmtpIntake
from mailmux.backend.store.interface import MailStore
from tests.backend.smtp.support import ALICE, BOB, WrappedStore, make_config, stored

MESSAGE = b"From: sender@example.org\r\nSubject: lmtp\r\n\r\nHello.\r\n"


@pytest.fixture
def wrapped(store: MailStore) -> WrappedStore:
    return WrappedStore(store)


@pytest.fixture
async def lmtp(tmp_path: Path, wrapped: WrappedStore) -> AsyncIterator[tuple[str, int]]:
    intake = SmtpIntake(make_config(tmp_path), wrapped.as_store(), LoadMeter())
    await intake.start()
    assert intake.lmtp_address is not None
    try:
        yield intake.lmtp_address
    finally:
        await intake.close()


def _lmtp_two_recipients(address: tuple[str, int]) -> list[tuple[int, bytes]]:
    with smtplib.LMTP(*address, timeout=10) as client:
        assert client.ehlo()[0] == 250  # smtplib.LMTP sends LHLO
        assert client.mail("sender@example.org")[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        assert client.rcpt(BOB)[0] == 250
        # smtplib reads one reply after DATA; the second recipient's is the next line.
        replies = [client.data(MESSAGE), client.getreply()]
        assert client.noop()[0] == 250  # nothing else was left in the stream
        return replies


async def test_two_recipients_get_two_replies(lmtp: tuple[str, int], store: MailStore) -> None:
    replies = await asyncio.to_thread(_lmtp_two_recipients, lmtp)
    assert [code for code, _ in replies] == [250, 250]
    assert replies[0][1].startswith(f"2.0.0 <{ALICE}> Ok: queued as ".encode())
    assert replies[1][1].startswith(f"2.0.0 <{BOB}> Ok: queued as ".encode())
    [(guid_a, body)] = await stored(store, ALICE)
    [(guid_b, _)] = await stored(store, BOB)
    assert guid_a == guid_b
    assert replies[0][1].endswith(guid_a.encode())
    assert f"with LMTP id {guid_a}".encode() in body


async def _replies_after_data(
    address: tuple[str, int], recipients: list[str]
) -> tuple[list[bytes], bytes]:
    """Raw socket: the reply lines after DATA's final dot, then the reply to a NOOP."""
    reader, writer = await asyncio.open_connection(*address)
    await reader.readline()
    writer.write(b"LHLO client.example\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    writer.write(b"MAIL FROM:<sender@example.org>\r\n")
    assert (await reader.readline()).startswith(b"250 ")
    for recipient in recipients:
        writer.write(f"RCPT TO:<{recipient}>\r\n".encode())
        await reader.readline()
    writer.write(b"DATA\r\n")
    assert (await reader.readline()).startswith(b"354 ")
    writer.write(MESSAGE + b".\r\nNOOP\r\n")
    lines = []
    while not (line := await reader.readline()).startswith(b"250 2.0.0 OK"):
        lines.append(line)
    writer.close()
    await writer.wait_closed()
    return lines, line


async def test_raw_socket_sees_one_line_per_accepted_recipient(lmtp: tuple[str, int]) -> None:
    lines, noop = await _replies_after_data(lmtp, [ALICE, "nobody@example.test", BOB])
    assert len(lines) == 2  # the refused RCPT gets no DATA reply
    assert lines[0].startswith(f"250 2.0.0 <{ALICE}> ".encode())
    assert lines[1].startswith(f"250 2.0.0 <{BOB}> ".encode())
    assert noop == b"250 2.0.0 OK\r\n"


async def test_failing_recipient_gets_its_own_failure(
    lmtp: tuple[str, int], wrapped: WrappedStore, store: MailStore
) -> None:
    wrapped.fail_for[BOB] = ServerError("disk full")
    lines, _ = await _replies_after_data(lmtp, [ALICE, BOB])
    assert lines[0].startswith(f"250 2.0.0 <{ALICE}> ".encode())
    assert lines[1].startswith(b"451 4.3.0 ")
    assert len(await stored(store, ALICE)) == 1
    assert await stored(store, BOB) == []


async def test_helo_and_ehlo_are_not_lmtp(lmtp: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*lmtp)
    assert (await reader.readline()).startswith(b"220 ")
    for verb in (b"HELO", b"EHLO"):
        writer.write(verb + b" client.example\r\n")
        assert (await reader.readline()).startswith(b"500 ")
    writer.close()
    await writer.wait_closed()


async def test_a_repeated_recipient_gets_its_reply_and_one_copy(
    lmtp: tuple[str, int], store: MailStore
) -> None:
    lines, _ = await _replies_after_data(lmtp, [ALICE, "ALICE@example.test"])
    assert [line[:4] for line in lines] == [b"250 ", b"250 "]
    assert len(await stored(store, ALICE)) == 1
