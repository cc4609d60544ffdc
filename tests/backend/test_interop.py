"""Interop with real Debian clients: mbsync (isync) and swaks. `.ci/run` installs both."""

from __future__ import annotations

import email
import email.policy
import imaplib
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.nodes import NodeProcess
from tests.support.tools import require_tool

pytestmark = pytest.mark.interop

ATTACHMENT = bytes(range(256)) * 40  # binary, so base64 round-trips are really checked


def _require(tool: str) -> str:
    return require_tool(tool)


def _message_with_attachment(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = "alice@example.test"
    msg["Subject"] = subject
    msg.set_content("Please find the report attached.\n")
    msg.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream",
                       filename="report.bin")
    return msg.as_bytes(policy=email.policy.SMTP)


def _mbsync_config(tmp: Path, node: NodeProcess) -> Path:
    maildir = tmp / "Mail"
    maildir.mkdir()
    config = tmp / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount test
Host {node.imap[0]}
Port {node.imap[1]}
User alice@example.test
Pass alice-pw
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns INBOX
Create Both
SyncState *
Sync All
Expunge Both
"""
    )
    return config


def _run_mbsync(config: Path) -> None:
    result = subprocess.run(
        [_require("mbsync"), "-c", str(config), "-a"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _maildir_files(inbox: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (inbox / sub).glob("*"))


def test_mbsync_round_trip_with_attachment_and_flags(node: NodeProcess, tmp_path: Path) -> None:
    _require("mbsync")
    original = _message_with_attachment("quarterly report")
    with smtplib.SMTP(*node.smtp) as smtp:
        smtp.sendmail("sender@example.org", ["alice@example.test"], original)
    with imaplib.IMAP4(*node.imap) as imap:
        imap.login("alice@example.test", "alice-pw")
        imap.select("INBOX")
        assert imap.store("1", "+FLAGS", r"(\Flagged)")[0] == "OK"

    config = _mbsync_config(tmp_path, node)
    _run_mbsync(config)

    inbox = tmp_path / "Mail" / "INBOX"
    files = _maildir_files(inbox)
    assert len(files) == 1
    local = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert local["Subject"] == "quarterly report"
    parts = [p for p in local.iter_attachments()]
    assert parts[0].get_filename() == "report.bin"
    assert parts[0].get_content() == ATTACHMENT
    assert files[0].name.endswith(",F"), files[0].name  # \Flagged came down as maildir flag F

    # Locally: mark the message seen, and file a new message; then sync back up.
    files[0].rename(files[0].with_name(files[0].name + "S"))
    new_msg = _message_with_attachment("written offline")
    (inbox / "new" / "1700000000.local.host").write_bytes(new_msg.replace(b"\r\n", b"\n"))
    _run_mbsync(config)

    with imaplib.IMAP4(*node.imap) as imap:
        imap.login("alice@example.test", "alice-pw")
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        assert typ == "OK"
        fetched = [item for item in data if isinstance(item, tuple)]
    assert len(fetched) == 2
    by_subject = {
        email.message_from_bytes(body, policy=email.policy.default)["Subject"]: head
        for head, body in fetched
    }
    assert set(by_subject) == {"quarterly report", "written offline"}
    assert b"\\Seen" in by_subject["quarterly report"]
    assert b"\\Flagged" in by_subject["quarterly report"]
    uploaded = email.message_from_bytes(
        next(b for _, b in fetched if b"written offline" in b), policy=email.policy.default
    )
    assert next(iter(uploaded.iter_attachments())).get_content() == ATTACHMENT


def test_swaks_delivers(node: NodeProcess, tmp_path: Path) -> None:
    swaks = _require("swaks")
    body = tmp_path / "body.txt"
    body.write_text("hello from swaks\n")
    result = subprocess.run(
        [swaks, "--server", f"{node.smtp[0]}:{node.smtp[1]}", "--from", "ops@example.org",
         "--to", "bob@example.test", "--header", "Subject: swaks check",
         "--body", str(body), "--attach", str(body)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0" in result.stdout
    with imaplib.IMAP4(*node.imap) as imap:
        imap.login("bob@example.test", "bob-pw")
        imap.select("INBOX", readonly=True)
        typ, data = imap.search("UTF-8", "SUBJECT", "\"swaks check\"")
        assert typ == "OK" and data[0].split() == [b"1"]
        typ, data = imap.fetch("1", "(BODY.PEEK[TEXT])")
        assert b"hello from swaks" in data[0][1]


def test_swaks_unknown_user_refused(node: NodeProcess) -> None:
    swaks = _require("swaks")
    result = subprocess.run(
        [swaks, "--server", f"{node.smtp[0]}:{node.smtp[1]}", "--from", "ops@example.org",
         "--to", "nobody@example.test"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "550 5.1.1" in result.stdout
