"""SMTP intake against real clients (smtplib, aiosmtplib) and a real store."""

from __future__ import annotations

import asyncio
import re
import smtplib
from email.message import EmailMessage

import aiosmtplib
import pytest

from mailmux.backend.load import LoadMeter
from mailmux.backend.smtp.server import SmtpIntake
from mailmux.backend.store.interface import MailStore
from tests.backend.smtp.support import ALICE, BOB, MAX_SIZE, stored, until

MESSAGE = b"From: sender@example.org\r\nSubject: hello\r\n\r\nHello, Alice.\r\n"
GUID = "5f0e2c1d9a8b7c6d5e4f3a2b1c0d9e8f"


def smtp_address(intake: SmtpIntake) -> tuple[str, int]:
    assert intake.smtp_address is not None
    return intake.smtp_address


def client_for(intake: SmtpIntake) -> aiosmtplib.SMTP:
    host, port = smtp_address(intake)
    return aiosmtplib.SMTP(hostname=host, port=port, timeout=10, start_tls=False)


def _sendmail(
    intake: SmtpIntake, recipients: list[str], message: bytes
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(*smtp_address(intake), timeout=10) as client:
        return client.sendmail("sender@example.org", recipients, message)


async def sendmail(intake: SmtpIntake, recipients: list[str], message: bytes = MESSAGE) -> None:
    await asyncio.to_thread(_sendmail, intake, recipients, message)


def queued_guid(reply: str) -> str:
    match = re.search(r"queued as ([0-9a-f]+)$", reply)
    assert match, reply
    return match.group(1)


async def test_delivery_is_stored_with_received_header_and_guid(
    intake: SmtpIntake, store: MailStore
) -> None:
    client = client_for(intake)
    async with client:
        _, reply = await client.sendmail("sender@example.org", [ALICE], MESSAGE)
    guid = queued_guid(reply)
    assert reply.startswith("2.0.0 Ok: queued as ")
    [(stored_guid, body)] = await stored(store, ALICE)
    assert stored_guid == guid
    received, rest = body.split(b"\r\n\t", 1)
    assert received.startswith(b"Received: from ")
    assert f"by a (mailmux) with ESMTP id {guid}".encode() in rest
    assert f"for <{ALICE}>;".encode() in rest
    assert body.endswith(b"\r\n" + MESSAGE)


async def test_ehlo_advertises_the_extensions(intake: SmtpIntake) -> None:
    client = client_for(intake)
    async with client:
        await client.ehlo()
        extensions = client.esmtp_extensions
    assert extensions["size"] == str(MAX_SIZE)
    for name in ("8bitmime", "smtputf8", "enhancedstatuscodes", "pipelining"):
        assert name in extensions
    assert "starttls" not in extensions  # no certificate configured
    assert "auth" not in extensions and "help" not in extensions


async def test_unknown_user_is_refused_and_the_session_continues(
    intake: SmtpIntake, store: MailStore
) -> None:
    client = client_for(intake)
    async with client:
        await client.mail("sender@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("nobody@example.test")
        assert refused.value.code == 550
        assert refused.value.message == "5.1.1 <nobody@example.test>: no such user"
        await client.rcpt(ALICE)
        response = await client.data(MESSAGE)
        assert response.code == 250
    assert len(await stored(store, ALICE)) == 1


async def test_other_domains_are_relaying(intake: SmtpIntake) -> None:
    client = client_for(intake)
    async with client:
        await client.mail("sender@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("alice@elsewhere.example")
    assert (refused.value.code, refused.value.message) == (550, "5.7.1 Relaying denied")


async def test_smtplib_reports_the_refused_recipient_and_delivers_to_the_rest(
    intake: SmtpIntake, store: MailStore
) -> None:
    def send() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(*smtp_address(intake), timeout=10) as client:
            refused: dict[str, tuple[int, bytes]] = client.sendmail(
                "sender@example.org", [ALICE, "ghost@example.test", BOB], MESSAGE
            )
            return refused

    refused = await asyncio.to_thread(send)
    assert refused == {"ghost@example.test": (550, b"5.1.1 <ghost@example.test>: no such user")}
    [(guid_a, body_a)] = await stored(store, ALICE)
    [(guid_b, _)] = await stored(store, BOB)
    assert guid_a == guid_b
    assert b"\tfor <" not in body_a  # two recipients: the trace names neither


async def test_recipient_case_is_normalised(intake: SmtpIntake, store: MailStore) -> None:
    await sendmail(intake, ["Alice@EXAMPLE.Test"])
    assert len(await stored(store, ALICE)) == 1


async def test_size_parameter_too_big_is_refused_at_mail(intake: SmtpIntake) -> None:
    client = client_for(intake)
    async with client:
        await client.ehlo()
        response = await client.execute_command(
            f"MAIL FROM:<sender@example.org> SIZE={MAX_SIZE + 1}".encode()
        )
        assert response.code == 552
        assert response.message.startswith("5.3.4 ")
        # The session goes on: a message within the limit is accepted.
        _, reply = await client.sendmail("sender@example.org", [ALICE], MESSAGE)
        assert "queued as" in reply


async def test_data_too_big_is_refused(intake: SmtpIntake, store: MailStore) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
    big *= MAX_SIZE // len(big) + 1
    client = client_for(intake)
    async with client:
        await client.mail("sender@example.org")  # no SIZE=: only DATA can tell
        await client.rcpt(ALICE)
        with pytest.raises(aiosmtplib.SMTPDataError) as error:
            await client.data(big)
        assert error.value.code == 552
        assert error.value.message.startswith("5.3.4 ")
        assert (await client.noop()).code == 250
    assert await stored(store, ALICE) == []


async def test_a_replay_id_is_stored_once_and_answered_as_the_original(
    intake: SmtpIntake, store: MailStore
) -> None:
    replies = []
    for _ in range(2):  # the gateway replaying a transaction after a failover
        client = client_for(intake)
        async with client:
            replies.append((await client.sendmail(
                "sender@example.org", [ALICE], MESSAGE, mail_options=["XREPLAY=gw1-7.a_b"]))[1])
    assert queued_guid(replies[0]) == queued_guid(replies[1])
    [(guid, body)] = await stored(store, ALICE)
    assert guid == queued_guid(replies[0])
    assert body.endswith(MESSAGE)


async def test_identical_transactions_and_signed_stamps_never_drop_a_message(
    intake: SmtpIntake, store: MailStore
) -> None:
    # A GUID field (once the pool's own signed stamp) can be copied by anyone who received the
    # message (issue 9, finding 12): it must not make the store drop a later message, nor may
    # identical bytes.
    message = f"X-Mailmux-GUID: {GUID}; mac={'5' * 32}\r\n".encode() + MESSAGE
    for _ in range(2):
        await sendmail(intake, [ALICE], message)
    assert len(await stored(store, ALICE)) == 2


async def test_a_malformed_replay_id_is_a_syntax_error(intake: SmtpIntake) -> None:
    client = client_for(intake)
    async with client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as error:
            await client.sendmail("sender@example.org", [ALICE], MESSAGE,
                                  mail_options=["XREPLAY=a/b"])
        assert error.value.code == 501
        assert (await client.noop()).code == 250


async def test_board_delivery(intake: SmtpIntake, store: MailStore) -> None:
    await sendmail(intake, ["board+news@example.test"])
    [(_, body)] = await stored(store, ALICE, "Boards/news")
    assert body.endswith(MESSAGE)
    assert await stored(store, ALICE) == []


async def test_unknown_board_is_no_such_user(intake: SmtpIntake) -> None:
    client = client_for(intake)
    async with client:
        await client.mail("sender@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("board+sports@example.test")
    assert refused.value.message.startswith("5.1.1 ")


async def test_builtin_errors_carry_enhanced_codes_and_the_session_survives(
    intake: SmtpIntake,
) -> None:
    reader, writer = await asyncio.open_connection(*smtp_address(intake))
    assert (await reader.readline()).startswith(b"220 ")
    writer.write(b"EHLO client.example\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    for command, expected in [
        (b"RCPT TO:<alice@example.test>", b"503 5.5.1 "),  # before MAIL
        (b"MAIL FROM:", b"501 5.5.4 "),
        (b"MAIL FROM:<a@example.org> BODY=9BIT", b"501 5.5.4 "),
        (b"DATA", b"503 5.5.1 "),
        (b"X" * 2000, b"500 5.5.2 "),  # command line too long
        (b"MAIL FROM:<a@example.org> FOO=1", b"555 5.5.4 "),
        (b"NOOP", b"250 2.0.0 "),
    ]:
        writer.write(command + b"\r\n")
        assert (await reader.readline()).startswith(expected), command
    writer.close()
    await writer.wait_closed()


async def test_pipelined_transaction(intake: SmtpIntake, store: MailStore) -> None:
    """All commands in one write, as a PIPELINING client may; every reply arrives in order."""
    reader, writer = await asyncio.open_connection(*smtp_address(intake))
    await reader.readline()
    writer.write(
        b"EHLO client.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
        b"RCPT TO:<bob@example.test>\r\nDATA\r\n"
    )
    await writer.drain()
    while not (await reader.readline()).startswith(b"250 "):
        pass
    codes = [(await reader.readline())[:3] for _ in range(4)]
    assert codes == [b"250", b"250", b"250", b"354"]
    writer.write(MESSAGE + b".\r\nQUIT\r\n")
    assert (await reader.readline()).startswith(b"250 2.0.0 Ok: queued as ")
    assert (await reader.readline()).startswith(b"221 ")
    writer.close()
    await writer.wait_closed()
    assert len(await stored(store, BOB)) == 1


async def test_smtputf8_and_8bit_content_are_kept(intake: SmtpIntake, store: MailStore) -> None:
    message = EmailMessage()
    message["From"] = "Zoë <zoe@exämple.org>"
    message["To"] = ALICE
    message["Subject"] = "Grüße"
    message.set_content("Schöne Grüße\n", cte="8bit")
    client = client_for(intake)
    async with client:
        await client.send_message(message)
    [(_, body)] = await stored(store, ALICE)
    assert "Schöne Grüße".encode() in body
    assert b"with UTF8SMTP id" in body


async def test_meter_counts_sessions_and_transactions(
    tmp_path: object, store: MailStore, meter: LoadMeter, intake: SmtpIntake
) -> None:
    client = client_for(intake)
    await client.connect()
    await until(lambda: meter.sessions == 1)
    await client.quit()
    await until(lambda: meter.sessions == 0)
    assert meter.transactions_in_flight == 0


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\n",  # RFC 5321 4.5.2 transparency
        b"Subject: blank lines\r\n\r\n\r\n\r\nend\r\n",
        b"Subject: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9 \xff\xfe raw bytes\r\n",
    ],
)
async def test_content_is_stored_byte_for_byte(
    intake: SmtpIntake, store: MailStore, message: bytes
) -> None:
    await sendmail(intake, [ALICE], message)
    [(_, body)] = await stored(store, ALICE)
    assert body.split(b"\r\n", 3)[3] == message  # after the 3-line Received header


async def test_a_stamp_not_signed_by_the_pool_is_not_trusted(
    intake: SmtpIntake, store: MailStore
) -> None:
    forged = f"X-Mailmux-GUID: {GUID}; mac={'7' * 32}\r\n".encode() + MESSAGE
    client = client_for(intake)
    async with client:
        reply = (await client.sendmail("sender@example.org", [ALICE], forged))[1]
    assert queued_guid(reply) != GUID
    [(guid, _)] = await stored(store, ALICE)
    assert guid != GUID
