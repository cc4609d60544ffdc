"""SMTP submission through the gateway: smtplib and swaks in, IMAP through the gateway out."""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
from collections.abc import Callable

import pytest

from tests.gateway.conftest import ALICE, BOB
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess
from tests.support.tools import skip_unless_tool


def _message(subject: str) -> bytes:
    return (f"From: {BOB[0]}\r\nTo: {ALICE[0]}\r\nSubject: {subject}\r\n"
            "Message-ID: <" + subject.replace(" ", ".") + "@example.test>\r\n\r\nbody\r\n").encode()


def _count(address: tuple[str, int], subject: str) -> int:
    client = imaplib.IMAP4(*address, timeout=30)
    client.login(*ALICE)
    client.select("INBOX", readonly=True)
    _, data = client.search(None, "SUBJECT", f'"{subject}"')
    client.logout()
    return len(data[0].split())


def _landed_on(gw: GatewayProcess, subject_guid_log: str = "accepted by ") -> list[str]:
    return [line.rsplit(" ", 1)[1] for line in gw.log().splitlines() if subject_guid_log in line]


def test_send_with_smtplib_and_read_back_through_the_gateway(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    with smtplib.SMTP(*gw.submission, timeout=30) as smtp:
        smtp.login(*BOB)
        refused = smtp.sendmail(BOB[0], [ALICE[0]], _message("hello through the gateway"))
        assert refused == {}
        smtp.mail(BOB[0])
        code, _ = smtp.rcpt("someone@elsewhere.example")
        assert code == 250  # outside recipients go to the outbound queue (tests/outbound/)
        smtp.rset()
    assert _count(gw.imap, "hello through the gateway") == 1


def test_auth_is_required_and_wrong_password_refused(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    with smtplib.SMTP(*gw.submission, timeout=30) as smtp:
        smtp.ehlo()
        code, reply = smtp.mail(BOB[0])
        assert code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login(BOB[0], "wrong")
        assert info.value.smtp_code == 535
        smtp.login(*BOB)
        code, reply = smtp.mail(ALICE[0])
        assert code == 553, reply
        smtp.rset()
        smtp.mail(BOB[0])
        code, reply = smtp.rcpt("nobody@example.test")
        assert code == 550 and b"5.1.1" in reply


@skip_unless_tool("swaks")
def test_swaks_submits_through_the_gateway(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    result = subprocess.run(
        ["swaks", "--server", gw.submission[0], "--port", str(gw.submission[1]),
         "--from", BOB[0], "--to", ALICE[0], "--auth", "PLAIN", "--auth-user", BOB[0],
         "--auth-password", BOB[1], "--header", "Subject: from swaks", "--body", "hi"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _count(gw.imap, "from swaks") == 1


def test_backend_killed_mid_transaction_still_250_and_stored_once(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3)
    with smtplib.SMTP(*gw.submission, timeout=30) as smtp:
        smtp.login(*BOB)
        smtp.mail(BOB[0])
        assert smtp.rcpt(ALICE[0])[0] == 250
        pool3[0].kill()  # the node every candidate list starts with when loads tie
        code, reply = smtp.data(_message("survives a dead node"))
        assert code == 250, reply
    total = sum(_count(n.imap, "survives a dead node") for n in pool3[1:])
    assert total == 1


def test_two_identical_submissions_are_two_messages(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    # Deduplication is by the gateway's replay id (XREPLAY), never by content (issue 7).
    gw = gateway_factory(pool3[:1])
    message = _message("sent twice")
    for _ in range(2):
        with smtplib.SMTP(*gw.submission, timeout=30) as smtp:
            smtp.login(*BOB)
            assert smtp.sendmail(BOB[0], [ALICE[0]], message) == {}
    assert _count(gw.imap, "sent twice") == 2


def test_no_backend_gives_451(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    with smtplib.SMTP(*gw.submission, timeout=30) as smtp:
        smtp.login(*BOB)
        smtp.mail(BOB[0])
        assert smtp.rcpt(ALICE[0])[0] == 250
        pool3[0].kill()
        code, reply = smtp.data(_message("nowhere to go"))
        assert code == 451 and b"4.3.0" in reply


def test_auth_login_mechanism(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    with smtplib.SMTP(*gw.submission, timeout=30) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = BOB
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235
        assert smtp.sendmail(BOB[0], [ALICE[0]], _message("via auth login")) == {}
    assert _count(gw.imap, "via auth login") == 1
