"""Findings 3 and 4: FETCH amplification and poison content, against a node and a gateway."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable

import pytest

from tests.security.support import ALICE, BOB, Raw, rss_kib, served
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(240)
BIG = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * (2 * 1024 * 1024 // 78)
GROWTH_LIMIT_KIB = 64 * 1024


def _append(raw: Raw, message: bytes, mailbox: bytes = b"INBOX") -> None:
    raw.send(b"ap APPEND " + mailbox + b" {%d+}\r\n" % len(message) + message + b"\r\n")
    reply = raw.until_tag(b"ap")
    assert reply[-1].startswith(b"ap OK"), reply[-1]


def _peak_rss_while_unread(pid: int, sock: socket.socket, command: bytes) -> int:
    """Send a command and do not read the answer; the highest RSS seen over a few seconds."""
    sock.sendall(command)
    peak = 0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.1)  # sampling memory over a window, not synchronising
    return peak


def _slow_reader(address: tuple[str, int]) -> Raw:
    raw = Raw(address)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    return raw


def test_fetch_items_are_capped_and_big_answers_stream(victim: Callable[..., NodeProcess]) -> None:
    node = victim()
    with Raw(node.imap) as alice:
        alice.login()
        _append(alice, BIG)
        assert alice.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        reply = alice.command(b"f1", b"FETCH 1 (" + b" ".join([b"BODY.PEEK[]"] * 100) + b")")
        assert reply[-1].startswith(b"f1 NO [LIMIT]"), reply[-1][:200]
    before = rss_kib(node.pid)
    with _slow_reader(node.imap) as reader:
        reader.login()
        assert reader.command(b"s", b"EXAMINE INBOX")[-1].startswith(b"s OK")
        items = b" ".join([b"BODY.PEEK[]"] * 50)
        peak = _peak_rss_while_unread(node.pid, reader.sock, b"f2 FETCH 1 (" + items + b")\r\n")
        served(node.imap)
    assert peak - before < GROWTH_LIMIT_KIB, f"node grew by {peak - before} KiB"


def test_gateway_relays_big_answers_in_chunks(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = victim()
    gateway = gateway_factory([node])
    with Raw(node.imap) as alice:
        alice.login()
        _append(alice, BIG)
    gw_pid = gateway.proc.pid if gateway.proc else 0
    before = rss_kib(gw_pid)
    with _slow_reader(gateway.imap) as reader:
        reader.login()
        assert reader.command(b"s", b"EXAMINE INBOX")[-1].startswith(b"s OK")
        items = b" ".join([b"BODY.PEEK[]"] * 50)
        peak = _peak_rss_while_unread(gw_pid, reader.sock, b"f2 FETCH 1 (" + items + b")\r\n")
        served(gateway.imap)
        # The whole answer arrives intact once the client reads it.
        reader.sock.settimeout(60)
        total = 0
        while not (line := reader.reader.readline()).startswith(b"f2 "):
            assert line, "gateway closed the connection"
            total += len(line)
        assert line.startswith(b"f2 OK") and total > 50 * len(BIG)
    assert peak - before < GROWTH_LIMIT_KIB, f"gateway grew by {peak - before} KiB"


def _many_parts(count: int) -> bytes:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\n%d\r\n" % i for i in range(count))
    return (b"From: alice@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n")


def _nested(depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\ncore\r\n"
    for _ in range(depth):
        body = b"Content-Type: message/rfc822\r\n\r\n" + body
    return b"From: alice@example.test\r\nSubject: deep\r\n" + body


def test_intake_refuses_poison_structures(victim: Callable[..., NodeProcess]) -> None:
    node = victim()
    with smtplib.SMTP(*node.smtp, timeout=30) as smtp:
        for message in (_many_parts(20_000), _nested(19)):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("alice@example.test", [BOB[0]], message)
            assert refused.value.smtp_code == 554
            assert refused.value.smtp_error.startswith(b"5.6.0")
        smtp.sendmail("alice@example.test", [BOB[0]], _many_parts(20))  # normal mail still in
    with Raw(node.imap) as alice:
        alice.login()
        reply = alice.command(b"a", b"APPEND INBOX {%d+}\r\n" % len(_many_parts(5000))
                              + _many_parts(5000))
        assert reply[-1].startswith(b"a NO [LIMIT]"), reply[-1]
    served(node.imap)


def test_keyword_limits(victim: Callable[..., NodeProcess]) -> None:
    node = victim()
    with Raw(node.imap) as alice:
        alice.login()
        _append(alice, b"Subject: k\r\n\r\nk\r\n")
        assert alice.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        many = b" ".join(b"kw%d" % i for i in range(200))
        assert alice.command(b"k1", b"STORE 1 +FLAGS (" + many + b")")[-1].startswith(
            b"k1 NO [LIMIT]")
        assert alice.command(b"k2", b"STORE 1 +FLAGS (" + b"k" * 5000 + b")")[-1].startswith(
            b"k2 NO [LIMIT]")
        for i in range(3):  # small steps cannot add up past the limit either
            chunk = b" ".join(b"s%d_%d" % (i, j) for j in range(30))
            last = alice.command(b"k3", b"STORE 1 +FLAGS (" + chunk + b")")[-1]
        assert last.startswith(b"k3 NO [LIMIT]"), last
        assert alice.command(b"k4", b"STORE 1 +FLAGS ($Junk)")[-1].startswith(b"k4 OK")


def test_long_response_lines_do_not_end_sessions_at_the_gateway(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = victim()
    gateway = gateway_factory([node])
    # An ENVELOPE line of 1.7 MB: beyond the gateway's old 1 MiB line limit.
    to = b", ".join(b'"%s %d" <user%d@example.test>' % (b"N" * 150, i, i) for i in range(9000))
    message = b"From: alice@example.test\r\nTo: " + to + b"\r\nSubject: wide\r\n\r\nhi\r\n"
    with Raw(node.imap) as alice:
        alice.login(BOB)
        _append(alice, message)
    with Raw(gateway.imap) as bob:
        bob.login(BOB)
        assert bob.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        reply = bob.command(b"f", b"FETCH 1 (ENVELOPE BODYSTRUCTURE)")
        assert reply[-1].startswith(b"f OK"), reply[-1][:200]
        assert sum(len(line) for line in reply) > 1024 * 1024
        assert bob.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    served(gateway.imap, ALICE)
