"""Outbound mail end to end with real processes: a Thunderbird-style submission through the
gateway, the nodes' replicated queue, and a remote server (aiosmtpd sink) found through MX
records on a loopback DNS server."""

from __future__ import annotations

import base64
import imaplib
import json
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.outbound.conftest import ALICE, outbound_table
from tests.support.dns_server import DnsServer
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess
from tests.support.smtp_sink import SmtpSink

REMOTE = "x@remote.test"
DEADLINE = 30.0


def message(subject: str, to: str = REMOTE, extra: str = "") -> str:
    return (f"From: Alice <{ALICE[0]}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@example.test>\r\n"
            f"{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Hello from the pool.\r\n")


def submit(gw: GatewayProcess, recipients: list[str], body: str) -> None:
    # What Thunderbird does: EHLO, AUTH PLAIN, MAIL, RCPT..., DATA.
    with smtplib.SMTP(*gw.submission, timeout=60) as smtp:
        smtp.ehlo("thunderbird.local")
        smtp.login(*ALICE)
        assert smtp.sendmail(ALICE[0], recipients, body.encode()) == {}


def queue_cli(node: NodeProcess, *args: str) -> Any:
    result = node.cli("queue", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling with a deadline


def inbox_subjects(node: NodeProcess) -> list[bytes]:
    with imaplib.IMAP4(*node.imap, timeout=10) as imap:
        imap.login(*ALICE)
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [item[1].strip() for item in data if isinstance(item, tuple)]


@pytest.mark.timeout(180)
def test_submission_to_remote_arrives_once_with_valid_dkim(
    tmp_path: Path, make_nodes: Callable[..., list[NodeProcess]],
    gateway_factory: Callable[..., GatewayProcess], sink: SmtpSink, dns: DnsServer,
) -> None:
    key = tmp_path / "example.test.pem"
    keygen = subprocess.run(
        [sys.executable, "-m", "mailmux.backend", "dkim", "keygen", "example.test",
         "--selector", "mm", "--key-file", str(key), "--config", str(_bare_config(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False)
    assert keygen.returncode == 0, keygen.stderr
    record = keygen.stdout.strip()
    assert record.startswith("mm._domainkey.example.test. IN TXT")
    txt = b"".join(record.encode().split(b'"')[1::2])
    outbound = outbound_table(sink, dns, '[outbound.dkim."example.test"]\n'
                                         f'selector = "mm"\nkey_file = "{key}"\n')
    nodes = make_nodes("ab", outbound)
    gw = gateway_factory(nodes)
    # Mixed recipients: alice is in the pool, x@remote.test is not; one 250 for both.
    submit(gw, [REMOTE, ALICE[0]], message("dkim-check", extra=f"Cc: <{ALICE[0]}>\r\n"))
    [got] = sink.wait_for(1)
    assert got.recipients == [REMOTE] and got.sender == ALICE[0]
    assert got.data.startswith(b"DKIM-Signature:")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mm._domainkey.example.test."
        return txt

    assert dkim.verify(got.data, dnsfunc=dnsfunc)
    assert not dkim.verify(got.data.replace(b"Hello from", b"Hello frum"), dnsfunc=dnsfunc)
    wait_for(lambda: b"Subject: dkim-check" in inbox_subjects(nodes[0]), "alice's copy")
    # Exactly once, whoever looks later: done on both replicas, nothing more arrives.
    for node in nodes:
        wait_for(lambda node=node: queue_cli(node, "list") == [], f"empty queue on {node.node_id}")
    assert len(sink.messages) == 1


def _bare_config(tmp_path: Path) -> Path:
    path = tmp_path / "keygen.toml"
    path.write_text(f'node_id = "k"\ndata_dir = "{tmp_path / "k"}"\ndomains = ["example.test"]\n'
                    'pool_secret = "0123456789abcdef"\nlisten_imap = "127.0.0.1:0"\n'
                    'listen_smtp = "127.0.0.1:0"\nlisten_control = "127.0.0.1:0"\n')
    return path


@pytest.mark.timeout(120)
def test_strangers_on_the_intake_port_cannot_relay(
    make_nodes: Callable[..., list[NodeProcess]], sink: SmtpSink, dns: DnsServer,
) -> None:
    [node] = make_nodes("a", outbound_table(sink, dns))
    with smtplib.SMTP(*node.smtp, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("someone@elsewhere.test")
        code, reply = smtp.rcpt(REMOTE)
        assert code == 550 and b"5.7.1" in reply
        # A forged gateway answer is refused, and the session goes on.
        code, _ = smtp.docmd("AUTH", "XMAILMUX")
        assert code == 334
        code, _ = smtp.docmd(base64.b64encode(b"0" * 64).decode())
        assert code == 535
        code, reply = smtp.rcpt(REMOTE)
        assert code == 550 and b"5.7.1" in reply
        code, _ = smtp.rcpt(ALICE[0])
        assert code == 250
    assert queue_cli(node, "list") == []


@pytest.mark.timeout(120)
def test_w2_with_one_node_up_is_refused_and_nothing_is_queued(
    make_nodes: Callable[..., list[NodeProcess]],
    gateway_factory: Callable[..., GatewayProcess], sink: SmtpSink, dns: DnsServer,
) -> None:
    nodes = make_nodes("abc", outbound_table(sink, dns), start="a", normal=2)
    gw = gateway_factory(nodes[:1])
    with smtplib.SMTP(*gw.submission, timeout=60) as smtp:
        smtp.login(*ALICE)
        smtp.mail(ALICE[0])
        assert smtp.rcpt(REMOTE)[0] == 250
        code, reply = smtp.data(message("refused").encode())
        assert code == 451 and b"4.3.0" in reply
    assert queue_cli(nodes[0], "list") == []
    assert sink.messages == []
    time.sleep(0)  # nothing to wait for: a refused message has no owner to deliver it later
