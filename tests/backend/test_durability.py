"""Nothing acknowledged is lost: SIGKILL right after 250 / APPEND OK, restart, it is there."""

from __future__ import annotations

import imaplib
import signal
import smtplib
import uuid

from tests.support.nodes import NodeProcess


def _subjects(node: NodeProcess, user: str, password: str, mailbox: str = "INBOX") -> list[str]:
    with imaplib.IMAP4(*node.imap) as imap:
        imap.login(user, password)
        typ, _ = imap.select(mailbox, readonly=True)
        assert typ == "OK"
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        return [
            item[1].decode().strip()
            for item in data
            if isinstance(item, tuple)
        ]


def test_smtp_250_survives_sigkill(node: NodeProcess) -> None:
    subject = f"durable-{uuid.uuid4().hex}"
    with smtplib.SMTP(*node.smtp) as smtp:
        refused = smtp.sendmail(
            "sender@example.org",
            ["alice@example.test"],
            f"Subject: {subject}\r\n\r\nmust survive\r\n".encode(),
        )
        assert refused == {}
        # The 250 has been read; the node dies before it can flush anything else.
        node.signal(signal.SIGKILL)
    node.proc.wait(timeout=10)  # type: ignore[union-attr]
    node.start()
    assert f"Subject: {subject}" in _subjects(node, "alice@example.test", "alice-pw")


def test_append_ok_survives_sigkill(node: NodeProcess) -> None:
    subject = f"appended-{uuid.uuid4().hex}"
    imap = imaplib.IMAP4(*node.imap)
    imap.login("bob@example.test", "bob-pw")
    typ, data = imap.append(
        "Drafts", r"(\Draft)", None, f"Subject: {subject}\r\n\r\nsaved draft\r\n".encode()
    )
    assert typ == "OK", data
    node.signal(signal.SIGKILL)
    node.proc.wait(timeout=10)  # type: ignore[union-attr]
    imap.shutdown()
    node.start()
    assert f"Subject: {subject}" in _subjects(node, "bob@example.test", "bob-pw", "Drafts")


def test_disconnect_mid_literal_stores_nothing(node: NodeProcess) -> None:
    import socket

    with socket.create_connection(node.imap, timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()  # greeting
        sock.sendall(b"a LOGIN bob@example.test bob-pw\r\n")
        assert reader.readline().startswith(b"a OK")
        sock.sendall(b"b APPEND INBOX {100}\r\n")
        assert reader.readline().startswith(b"+")
        sock.sendall(b"Subject: half\r\n\r\nonly part of the")  # then hang up
    with imaplib.IMAP4(*node.imap) as imap:
        imap.login("bob@example.test", "bob-pw")
        typ, data = imap.status("INBOX", "(MESSAGES)")
        assert typ == "OK"
        assert b"MESSAGES 0" in data[0]
