"""Findings 9 and 11: sender spoofing, recipient and size limits, 5xx relayed as 5xx."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from tests.security.support import ALICE, BOB, Raw
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(240)


def _mail(sender_header: str, body: bytes = b"hello\r\n") -> bytes:
    return (f"From: {sender_header}\r\nTo: {BOB[0]}\r\nSubject: s\r\n\r\n").encode() + body


def _body(size: int) -> bytes:
    """size octets of short lines (SMTP lines have a length limit)."""
    lines, rest = divmod(size, 80)
    return (b"x" * 78 + b"\r\n") * lines + (b"y" * (rest - 2) + b"\r\n" if rest >= 2 else b"")


def _bobs_inbox(node: NodeProcess) -> bytes:
    with Raw(node.imap) as bob:
        bob.login(BOB)
        bob.command(b"s", b"EXAMINE INBOX")
        return b"".join(bob.command(b"f", b"FETCH 1:* (BODY.PEEK[HEADER])"))


def test_from_must_be_the_authenticated_user(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = victim()
    gateway = gateway_factory([node])
    with smtplib.SMTP(*gateway.submission, timeout=60) as smtp:
        smtp.login(*ALICE)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(ALICE[0], [BOB[0]], _mail(f"Bob <{BOB[0]}>"))
        assert refused.value.smtp_code == 553
        assert refused.value.smtp_error.startswith(b"5.7.1")
        smtp.sendmail(ALICE[0], [BOB[0]], _mail(f"Alice <{ALICE[0]}>"))
    assert b"Bob <bob@" not in _bobs_inbox(node)


def test_add_sender_policy_marks_who_sent_it(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = victim()
    gateway = gateway_factory([node], 'sender_policy = "add-sender"')
    with smtplib.SMTP(*gateway.submission, timeout=60) as smtp:
        smtp.login(*ALICE)
        smtp.sendmail(ALICE[0], [BOB[0]], _mail(f"Bob <{BOB[0]}>"))
    assert f"Sender: <{ALICE[0]}>".encode() in _bobs_inbox(node)


def test_recipient_and_size_limits_and_permanent_refusals(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = victim("max_message_size = 100000")
    gateway = gateway_factory([node], "max_message_size = 100000\nmax_recipients = 5")
    with smtplib.SMTP(*gateway.submission, timeout=60) as smtp:
        smtp.login(*ALICE)
        smtp.mail(ALICE[0])
        for _ in range(5):
            assert smtp.rcpt(BOB[0])[0] == 250
        code, reply = smtp.rcpt(BOB[0])
        assert code == 452 and reply.startswith(b"4.5.3"), reply
        smtp.rset()
        exactly = _mail(ALICE[0], _body(100000 - len(_mail(ALICE[0], b""))))
        assert len(exactly) == 100000
        with pytest.raises(smtplib.SMTPException) as too_big:
            smtp.sendmail(ALICE[0], [BOB[0]], exactly)
        assert b"5.3.4" in str(too_big.value).encode()
        smtp.sendmail(ALICE[0], [BOB[0]], _mail(ALICE[0], _body(90000)))
        parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\n%d\r\n" % i
                         for i in range(1500))
        poison = (f"From: {ALICE[0]}\r\nMIME-Version: 1.0\r\n"
                  'Content-Type: multipart/mixed; boundary="b"\r\n\r\n').encode() + parts
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(ALICE[0], [BOB[0]], poison + b"--b--\r\n")
        assert refused.value.smtp_code == 554  # the node's 5xx, not a 451 to retry forever
    log = gateway.log()
    assert "quarantin" not in log and "failed twice" not in log
