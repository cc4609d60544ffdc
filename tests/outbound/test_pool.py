"""Outbound mail end to end with real processes: a Thunderbird-style submission through the
gateway, the nodes' replicated queue, and a remote server (aiosmtpd sink) found through MX
records on a loopback DNS server."""

from __future__ import annotations

import base64
import imaplib
import json
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.outbound.conftest import ALICE, outbound_table, wait_until_login
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
    assert b"X-Mailmux-GUID" not in got.data  # the pool's internal stamp stays inside

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
    # The client retries the same bytes once a second node is up: same GUID, and the refusal's
    # tombstone does not swallow it as a "replay".
    nodes[1].start()
    wait_until_login(nodes[1])

    def retried() -> bool:
        # As a client does after 451: again, until the pool can hold the copies (a's link to
        # the restarted b comes back within its reconnect backoff).
        with smtplib.SMTP(*gw.submission, timeout=60) as smtp:
            smtp.login(*ALICE)
            smtp.mail(ALICE[0])
            assert smtp.rcpt(REMOTE)[0] == 250
            code, reply = smtp.data(message("refused").encode())
            assert code in (250, 451), reply
            return code == 250

    wait_for(retried, "the retried submission to be accepted", deadline=60)
    [got] = sink.wait_for(1)
    assert b"Subject: refused" in got.data


@pytest.mark.timeout(240)
def test_sigkill_of_the_owner_mid_delivery_another_node_delivers(
    make_nodes: Callable[..., list[NodeProcess]],
    gateway_factory: Callable[..., GatewayProcess], sink: SmtpSink, dns: DnsServer,
) -> None:
    nodes = make_nodes("abc", outbound_table(sink, dns, 'lease = "2s"\npoll_interval = "0.2s"'))
    gw = gateway_factory(nodes)
    sink.handler.stall_rcpt = True  # the remote side hangs after RCPT
    submit(gw, [REMOTE], message("takeover"))
    wait_for(lambda: sink.handler.stalled > 0, "the owner's RCPT to reach the stalled remote")
    [queued] = queue_cli(nodes[0], "list")
    owner = next(n for n in nodes if n.node_id == queued["owner"])
    # The queue shows in every node's LOAD report, and so in `mailmux-gateway status`.
    def queued_everywhere() -> bool:
        status = json.loads(gw.cli("status", "--json").stdout)
        return sorted(m["queued"] for m in status["members"]) == [1, 1, 1]

    wait_for(queued_everywhere, "the queued message in every node's LOAD report")
    killed_at = time.monotonic()
    owner.kill()
    sink.handler.stall_rcpt = False
    received = sink.wait_for(1, deadline=60)
    takeover = time.monotonic() - killed_at
    survivors = [n for n in nodes if n is not owner]
    for node in survivors:
        wait_for(lambda node=node: queue_cli(node, "list") == [], f"queue on {node.node_id}")
    shown = queue_cli(survivors[0], "show", queued["id"])
    assert shown["state"] == "done" and shown["owner"] != owner.node_id and shown["epoch"] >= 2
    # At least once; the stalled transaction never reached DATA, so here exactly once.
    duplicates = len(sink.messages) - 1
    print(f"takeover after SIGKILL: delivered {takeover:.2f}s after the kill by "
          f"{shown['owner']}; duplicates {duplicates}")
    assert [m.recipients for m in received] == [[REMOTE]] and duplicates == 0
    # The killed owner comes back: it learns that the message is done and does not send again.
    owner.start()
    wait_for(lambda: queue_cli(owner, "show", queued["id"])["state"] == "done",
             "the restarted owner to learn of the takeover")
    assert len(sink.messages) == 1


@pytest.mark.timeout(240)
def test_a_hung_owner_is_taken_over_and_does_not_send_when_it_wakes(
    make_nodes: Callable[..., list[NodeProcess]],
    gateway_factory: Callable[..., GatewayProcess], sink: SmtpSink, dns: DnsServer,
) -> None:
    nodes = make_nodes("abc", outbound_table(sink, dns, 'lease = "2s"\npoll_interval = "0.2s"'))
    gw = gateway_factory(nodes)
    sink.handler.stall_rcpt = True
    submit(gw, [REMOTE], message("hang"))
    wait_for(lambda: sink.handler.stalled > 0, "the owner's RCPT to reach the stalled remote")
    [queued] = queue_cli(nodes[0], "list")
    owner = next(n for n in nodes if n.node_id == queued["owner"])
    owner.signal(signal.SIGSTOP)  # hung: alive, silent, its lease no longer renewed
    try:
        sink.handler.stall_rcpt = False  # its RCPT gets 250 now, into a frozen process
        [got] = sink.wait_for(1, deadline=60)
        others = [n for n in nodes if n is not owner]
        wait_for(lambda: queue_cli(others[0], "show", queued["id"])["state"] == "done",
                 "the new owner to finish")
    finally:
        owner.signal(signal.SIGCONT)
    # Awake again, the old owner finds its lease expired by its own clock and does not send
    # DATA; once its queue shows the message done, nothing more can come from it.
    wait_for(lambda: queue_cli(owner, "list") == [], "the old owner to learn of the takeover")
    wait_for(lambda: "expired mid-attempt; not sending" in owner.log(),
             "the old owner to give up its stale attempt")
    assert len(sink.messages) == 1 and got.recipients == [REMOTE]


@pytest.mark.timeout(180)
def test_queue_cli_show_retry_and_delete_reach_every_node(
    make_nodes: Callable[..., list[NodeProcess]],
    gateway_factory: Callable[..., GatewayProcess], sink: SmtpSink, dns: DnsServer,
) -> None:
    nodes = make_nodes("ab", outbound_table(sink, dns, 'retry_intervals = ["1h"]'))
    gw = gateway_factory(nodes)
    sink.handler.scripted[REMOTE] = ["451 4.7.1 greylisted"]
    sink.handler.scripted["gone@remote.test"] = ["451 4.2.1 busy"] * 100
    submit(gw, [REMOTE], message("retry-me"))
    submit(gw, ["gone@remote.test"], message("delete-me"))

    def attempted() -> list[Any]:
        return [m for m in queue_cli(nodes[1], "list") if m["attempts"] == 1]

    wait_for(lambda: len(attempted()) == 2, "both first attempts to be deferred")
    by_subject = {}
    for m in attempted():
        shown = queue_cli(nodes[0], "show", m["id"])
        [(rcpt, info)] = shown["recipients"].items()
        assert info["state"] == "pending" and info["text"].startswith("451 4.")
        by_subject[rcpt] = m["id"]
    table = nodes[0].cli("queue", "list")
    assert "2 message(s) queued" in table.stdout and REMOTE in table.stdout

    retried = nodes[1].cli("queue", "retry", by_subject[REMOTE])
    assert retried.returncode == 0, retried.stderr
    [got] = sink.wait_for(1)
    assert got.recipients == [REMOTE]

    deleted = nodes[1].cli("queue", "delete", by_subject["gone@remote.test"])
    assert deleted.returncode == 0, deleted.stderr
    for node in nodes:
        wait_for(lambda node=node: queue_cli(node, "list") == [], f"empty queue on {node.node_id}")
    shown = queue_cli(nodes[0], "show", by_subject["gone@remote.test"])
    assert shown["state"] == "done" and shown["done_reason"] == "deleted by operator"
    assert inbox_subjects(nodes[0]) == []  # deleting is not bouncing
    assert nodes[0].cli("queue", "retry", "no-such-id").returncode != 0
