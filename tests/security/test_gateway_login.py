"""Findings 2, 5, 6 and 14 at the gateway: pre-login limits, caps, login penalties, enumeration."""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import time
from collections.abc import Callable

import pytest

from tests.security.support import ALICE, BOB, Raw, rss_kib, served
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(240)


def test_gateway_refuses_big_literals_before_login(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory([victim()])
    pid = gateway.proc.pid if gateway.proc else 0
    before = rss_kib(pid)
    with Raw(gateway.imap) as stranger:
        assert stranger.command(b"a1", b"LOGIN {50000}")[-1].startswith(b"a1 NO [TOOBIG]")
        with contextlib.suppress(OSError):
            stranger.send(b"a2 LOGIN {40000000+}\r\n" + b"x" * (8 * 1024 * 1024))
        reply = stranger.until_tag(b"a2")
        assert reply and reply[-1].startswith((b"a2 NO [TOOBIG]", b"a2 BAD [TOOBIG]")), reply
        assert stranger.line() == b""  # the rest cannot be skipped safely: closed
    assert rss_kib(pid) - before < 32 * 1024
    served(gateway.imap)


def test_gateway_login_timeout_and_connection_caps(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory([victim()], 'login_timeout = "2s"\nmax_unauthenticated = 5')
    held = [Raw(gateway.imap) for _ in range(5)]
    try:
        assert all(h.greeting.startswith(b"* OK") for h in held)
        with Raw(gateway.imap) as extra:
            assert extra.greeting.startswith(b"* BYE [UNAVAILABLE]"), extra.greeting
        for h in held:  # silent strangers are sent away: the server hangs up, we only read
            assert h.line().startswith(b"* BYE")
            assert h.line() == b""
    finally:
        for h in held:
            h.close()
    served(gateway.imap)


def _login_answer(address: tuple[str, int], user: str, password: str) -> tuple[bytes, float]:
    started = time.monotonic()
    with Raw(address) as client:
        reply = client.command(b"l", f'LOGIN "{user}" "{password}"'.encode())
    return reply[-1], time.monotonic() - started


def test_unknown_users_and_wrong_passwords_look_the_same(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory([victim()], 'failed_login_delay = "1500ms"')
    wrong, wrong_took = _login_answer(gateway.imap, ALICE[0], "guess")
    unknown, unknown_took = _login_answer(gateway.imap, "nobody@example.test", "guess")
    assert wrong.startswith(b"l NO [AUTHENTICATIONFAILED]"), wrong
    assert unknown == wrong
    assert unknown_took >= 1.5 and wrong_took >= 1.5  # both padded to the same floor
    with smtplib.SMTP(*gateway.submission, timeout=60) as smtp:
        smtp.ehlo()
        for user in ("nobody@example.test", ALICE[0]):
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login(user, "guess")
            assert refused.value.smtp_code == 535
            assert refused.value.smtp_error.startswith(b"5.7.8")


def test_failed_logins_are_penalised_across_connections(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory([victim()], 'failed_login_delay = "200ms"')
    for _ in range(4):  # each guess on a fresh connection, as a brute-forcer would
        assert _login_answer(gateway.imap, ALICE[0], "guess")[0].startswith(b"l NO")
    answer, took = _login_answer(gateway.imap, ALICE[0], "guess")
    assert answer.startswith(b"l NO [AUTHENTICATIONFAILED]")
    assert took >= 0.2 * 2 ** 3  # the fifth guess waits for the penalty the first four earned
    served(gateway.imap, BOB, within=60)


def test_plain_authzid_must_match_at_the_gateway(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory([victim()])
    blob = base64.b64encode(f"{BOB[0]}\0{ALICE[0]}\0{ALICE[1]}".encode())
    with Raw(gateway.imap) as client:
        reply = client.command(b"a", b"AUTHENTICATE PLAIN " + blob)
        assert reply[-1].startswith(b"a NO [AUTHORIZATIONFAILED]"), reply[-1]
    with socket.create_connection(gateway.submission, timeout=30) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"EHLO x\r\n")
        while not stream.readline().startswith(b"250 "):
            pass
        sock.sendall(b"AUTH PLAIN " + blob + b"\r\n")
        assert stream.readline().startswith(b"535 5.7.8")


def test_submission_login_timeout_and_connection_cap(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory([victim()], 'login_timeout = "2s"\nmax_connections = 3')
    held = [socket.create_connection(gateway.submission, timeout=30) for _ in range(3)]
    try:
        readers = [h.makefile("rb") for h in held]
        assert all(r.readline().startswith(b"220") for r in readers)
        with socket.create_connection(gateway.submission, timeout=30) as extra:
            assert b"421 4.7.0" in extra.makefile("rb").read()
        for r in readers:  # silent strangers are sent away: the server hangs up, we only read
            assert r.readline().startswith(b"421 4.7.0 Login timeout")
    finally:
        for h in held:
            h.close()
    with smtplib.SMTP(*gateway.submission, timeout=60) as smtp:
        smtp.login(*ALICE)
