"""Real clients against a node running as a subprocess."""

from __future__ import annotations

import base64
import contextlib
import imaplib
import smtplib
import socket
from collections.abc import Callable

import imapclient

from tests.support.nodes import NodeProcess

ALICE = ("alice@example.test", "alice-pw")


def _deliver(node: NodeProcess, subject: str, to: str = "alice@example.test") -> None:
    with smtplib.SMTP(*node.smtp) as smtp:
        smtp.sendmail("x@example.org", [to], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def test_idle_woken_by_smtp_delivery(node: NodeProcess) -> None:
    client = imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=10)
    client.login(*ALICE)
    client.select_folder("INBOX")
    client.idle()
    _deliver(node, "wake up")
    # idle_check returns as soon as the server pushes; 10 s is only the give-up deadline.
    responses = client.idle_check(timeout=10)
    client.idle_done()
    assert (1, b"EXISTS") in responses
    client.logout()


def test_two_sessions_see_each_others_changes(node: NodeProcess) -> None:
    _deliver(node, "one")
    _deliver(node, "two")
    first = imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=10)
    second = imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=10)
    for c in (first, second):
        c.login(*ALICE)
        c.select_folder("INBOX")
    uids = first.search("ALL")
    first.add_flags(uids[0], [imapclient.FLAGGED])
    first.delete_messages(uids[1])
    first.expunge()
    seen = second.noop()[1]
    assert (1, b"EXPUNGE") in seen or (2, b"EXPUNGE") in seen
    flags = second.get_flags(uids[0])
    assert imapclient.FLAGGED in flags[uids[0]]
    for c in (first, second):
        c.logout()


def test_password_never_logged(node_factory: Callable[..., NodeProcess]) -> None:
    n = node_factory("pw")
    n.add_user("carol@example.test", "s3cret-Pa55word")
    n.start(env={"MAILMUX_LOG_LEVEL": "DEBUG"})
    with imaplib.IMAP4(*n.imap) as imap, contextlib.suppress(imaplib.IMAP4.error):
        imap.login("carol@example.test", "wrong-Pa55word-xyz")
    with imaplib.IMAP4(*n.imap) as imap:
        imap.authenticate("PLAIN", lambda _: b"\0carol@example.test\0s3cret-Pa55word")
        imap.select("INBOX")
    with socket.create_connection(n.imap, timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"x LOGIN carol@example.test {15}\r\n")
        assert reader.readline().startswith(b"+")
        sock.sendall(b"s3cret-Pa55word\r\n")
        assert reader.readline().startswith(b"x OK")
    assert n.stop() == 0
    log = n.log()
    assert "carol@example.test" in log, "the node logged no logins at DEBUG"
    assert "s3cret-Pa55word" not in log
    assert "wrong-Pa55word-xyz" not in log
    sasl = base64.b64encode(b"\0carol@example.test\0s3cret-Pa55word").decode()
    assert sasl not in log
