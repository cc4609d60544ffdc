"""Every command of the node's IMAP server, driven by imapclient and imaplib on a real node."""

from __future__ import annotations

import imaplib
import smtplib
from datetime import UTC, datetime

import imapclient
import pytest

from tests.backend.imap.conftest import ALICE, BOB, connect, raw_session
from tests.support.nodes import NodeProcess

MULTIPART = (
    b"From: Bob Example <bob@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Alice,\r\nthe numbers are attached.\r\n"
    b"--b1\r\n"
    b'Content-Type: application/octet-stream; name="n.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="n.bin"\r\n'
    b"\r\n"
    b"AAECAwQ=\r\n"
    b"--b1--\r\n"
)


def _append(client: imapclient.IMAPClient, body: bytes, folder: str = "INBOX",
            flags: tuple[bytes, ...] = ()) -> int:
    response = client.append(folder, body, flags=flags)
    assert b"APPENDUID" in response
    return int(response.split(b"]")[0].split()[-1])


def test_capability_id_namespace_enable_noop(alice: imapclient.IMAPClient) -> None:
    caps = alice.capabilities()
    for cap in (b"IMAP4REV1", b"LITERAL+", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE",
                b"UNSELECT", b"CHILDREN", b"SPECIAL-USE", b"CONDSTORE", b"ENABLE", b"ID"):
        assert cap in caps
    assert b"STARTTLS" not in caps  # no certificate configured
    answer = alice.id_({"name": "pytest"})
    flat = answer[0] if len(answer) == 1 else answer
    assert dict(zip(flat[::2], flat[1::2], strict=True))[b"name"] == b"mailmux"
    personal, _, shared = alice.namespace()
    assert personal[0][0] == "" and shared[0][0] == "Boards/"
    assert alice.enable("CONDSTORE") == [b"CONDSTORE"]
    assert alice.noop()[0].startswith(b"NOOP")


def test_extended_list_special_use(node: NodeProcess) -> None:
    out = raw_session(node, b'a LIST (SPECIAL-USE) "" "*"\r\n',
                      b'b LIST "" "*" RETURN (SUBSCRIBED CHILDREN)\r\n', b'c LIST "" ""\r\n')
    special = [line for line in out.splitlines() if line.startswith(b"* LIST") and b"a OK" in out]
    names = {line.rsplit(b" ", 1)[1].strip(b'"') for line in special[:5]}
    assert names == {b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"}
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"' in out
    assert b'* LIST (\\Noselect) "/" ""' in out


def test_mailbox_management(alice: imapclient.IMAPClient) -> None:
    folders = {name: flags for flags, _, name in alice.list_folders()}
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(folders)
    assert b"\\Sent" in folders["Sent"]
    alice.create_folder("Projects/2026")
    listed = {name: flags for flags, _, name in alice.list_folders("", "Projects*")}
    assert b"\\HasChildren" in listed["Projects"] and b"\\Noselect" in listed["Projects"]
    alice.create_folder("Été")  # modified UTF-7 on the wire
    assert "Été" in [n for _, _, n in alice.list_folders()]
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="ALREADYEXISTS"):
        alice.create_folder("Été")
    alice.rename_folder("Projects/2026", "Projects/2027")
    assert alice.folder_exists("Projects/2027") and not alice.folder_exists("Projects/2026")
    alice.subscribe_folder("Projects/2027")
    assert "Projects/2027" in [n for _, _, n in alice.list_sub_folders()]
    alice.unsubscribe_folder("Projects/2027")
    assert "Projects/2027" not in [n for _, _, n in alice.list_sub_folders()]
    alice.delete_folder("Projects/2027")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
        alice.delete_folder("Projects/2027")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="CANNOT"):
        alice.delete_folder("INBOX")


def test_append_select_status_and_fetch_items(alice: imapclient.IMAPClient) -> None:
    when = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    uid = _append(alice, MULTIPART, flags=(b"\\Flagged",))
    alice.append("INBOX", b"Subject: second\r\n\r\nsmall\r\n", msg_time=when)
    status = alice.folder_status("INBOX", ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY",
                                           "HIGHESTMODSEQ"])
    assert status[b"MESSAGES"] == 2 and status[b"UNSEEN"] == 2 and status[b"UIDNEXT"] == uid + 2
    info = alice.select_folder("INBOX")
    assert info[b"EXISTS"] == 2 and info[b"UIDVALIDITY"] == status[b"UIDVALIDITY"]
    # the first session to select new mail owns its \Recent (RFC 3501 2.3.2)
    assert info[b"RECENT"] == 2
    assert b"\\*" in info[b"PERMANENTFLAGS"] and info[b"READ-WRITE"]
    data = alice.fetch([uid], ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE",
                                "BODYSTRUCTURE", "BODY", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]",
                                "BODY.PEEK[1]", "BODY.PEEK[2.MIME]", "BODY.PEEK[TEXT]<0.7>",
                                "RFC822.HEADER"])[uid]
    assert data[b"FLAGS"] == (b"\\Flagged", b"\\Recent")
    assert data[b"RFC822.SIZE"] == len(MULTIPART)
    envelope = data[b"ENVELOPE"]
    assert envelope.subject == b"=?utf-8?q?caf=C3=A9?= report"
    assert envelope.from_[0].mailbox == b"bob" and envelope.from_[0].name == b"Bob Example"
    assert envelope.message_id == b"<m1@example.test>"
    structure = data[b"BODYSTRUCTURE"]
    assert structure.is_multipart and structure[1] == b"MIXED"
    text_part, attachment = structure[0]
    assert text_part[:2] == (b"TEXT", b"PLAIN") and text_part[6] == 39 and text_part[7] == 2
    assert attachment[5] == b"BASE64" and attachment[8][0] == b"ATTACHMENT"
    subject = data[b"BODY[HEADER.FIELDS (SUBJECT)]"]
    assert subject == b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n\r\n"
    assert data[b"BODY[1]"] == b"Hello Alice,\r\nthe numbers are attached."
    assert data[b"BODY[2.MIME]"].startswith(b"Content-Type: application/octet-stream")
    assert data[b"BODY[TEXT]<0>"] == b"--b1\r\nC"
    assert data[b"RFC822.HEADER"].endswith(b"\r\n\r\n")
    # A non-peek body fetch sets \Seen and reports it.
    full = alice.fetch([uid], ["BODY[]"])[uid]
    assert full[b"BODY[]"] == MULTIPART and b"\\Seen" in full[b"FLAGS"]
    second = alice.search(["SUBJECT", "second"])[0]
    assert alice.fetch([second], ["INTERNALDATE"])[second][b"INTERNALDATE"].replace(
        tzinfo=None) == datetime(2026, 11, 20, 8, 30)
    examined = alice.select_folder("INBOX", readonly=True)
    assert examined[b"READ-ONLY"]
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="READ-ONLY"):
        alice.add_flags([uid], [b"\\Deleted"])


def test_search_keys_and_charset(alice: imapclient.IMAPClient) -> None:
    alice.append("INBOX", MULTIPART)
    alice.append("INBOX", "Subject: Grüße aus Köln\r\nFrom: carol@example.test\r\n\r\n"
                 "Straße\r\n".encode(), flags=[b"\\Answered"])
    alice.select_folder("INBOX")
    assert alice.search(["SUBJECT", "café"], charset="UTF-8") == [1]  # RFC 2047 decoded
    assert alice.search(["BODY", "Straße"], charset="UTF-8") == [2]
    assert alice.search(["FROM", "carol"]) == [2]
    assert alice.search(["ANSWERED"]) == [2] and alice.search(["UNANSWERED"]) == [1]
    assert alice.search(["OR", "FROM", "bob", "FROM", "carol"]) == [1, 2]
    assert alice.search(["NOT", "FROM", "bob"]) == [2]
    assert alice.search(["LARGER", 300]) == [1]
    assert alice.search(["SENTON", "24-Nov-2026"]) == [1]
    assert alice.search(["HEADER", "Message-ID", "m1@"]) == [1]
    assert alice.search(["TEXT", "numbers"]) == [1]
    assert alice.search(["UID", "2:*"]) == [2]
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="BADCHARSET"):
        alice.search(["SUBJECT", "x"], charset="KOI8-R")


def test_store_copy_move_expunge(alice: imapclient.IMAPClient) -> None:
    uids = [_append(alice, f"Subject: m{i}\r\n\r\nx\r\n".encode()) for i in range(4)]
    alice.select_folder("INBOX", readonly=True)  # looks without claiming (RFC 3501 2.3.2)
    alice.close_folder()
    alice.select_folder("INBOX")  # claims \\Recent: every FLAGS below carries \\Recent
    assert alice.add_flags(uids[:2], [b"\\Flagged", b"$Work"])[uids[0]] == (
        b"$Work", b"\\Flagged", b"\\Recent")
    assert alice.remove_flags(uids[:1], [b"$Work"])[uids[0]] == (b"\\Flagged", b"\\Recent")
    assert alice.set_flags(uids[3:], [b"\\Draft"])[uids[3]] == (b"\\Draft", b"\\Recent")
    alice.copy(uids[:2], "Archive")
    assert alice.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 2
    alice.move(uids[2:3], "Trash")
    assert alice.search(["ALL"]) == [uids[0], uids[1], uids[3]]  # imapclient searches UIDs
    assert alice.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"] == 1
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="TRYCREATE"):
        alice.copy(uids[:1], "Nowhere")
    alice.add_flags(uids[:1], [b"\\Deleted"])
    alice.add_flags(uids[1:2], [b"\\Deleted"])
    assert alice.uid_expunge(uids[:1])  # UIDPLUS: only the named one
    assert alice.search(["DELETED"]) == [uids[1]]
    alice.expunge()
    assert alice.search(["ALL"]) == [uids[3]]
    alice.close_folder()
    alice.select_folder("Archive")
    alice.unselect_folder()
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        alice.search(["ALL"])


def test_condstore(alice: imapclient.IMAPClient) -> None:
    uid = _append(alice, b"Subject: cs\r\n\r\nx\r\n")
    alice.enable("CONDSTORE")
    info = alice.select_folder("INBOX")
    modseq = info[b"HIGHESTMODSEQ"]
    alice.add_flags([uid], [b"\\Seen"])
    changed = alice.fetch([uid], ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"])
    assert changed[uid][b"MODSEQ"][0] > modseq
    assert alice.search(["MODSEQ", modseq + 1]) == [1]


def test_store_unchangedsince_reports_modified(node: NodeProcess) -> None:
    out = raw_session(
        node, b"a APPEND INBOX {7+}\r\nS: x\r\n\r\n", b"b SELECT INBOX (CONDSTORE)\r\n",
        # MODSEQs are hybrid-logical-clock stamps (docs/consistency.md): large numbers
        b"c UID STORE 1 (UNCHANGEDSINCE 1000000000000000000) +FLAGS (\\Seen)\r\n",
        b"d UID STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Flagged)\r\n",
    )
    assert b"c OK" in out and b"MODSEQ (" in out
    assert b"d OK [MODIFIED 1]" in out


def test_boards_are_shared_with_per_user_seen(node: NodeProcess) -> None:
    assert node.cli("board", "add", "news").returncode == 0
    with smtplib.SMTP(*node.smtp) as smtp:
        smtp.sendmail("x@example.org", ["board+news@example.test"], b"Subject: post\r\n\r\nhi\r\n")
    alice, bob = connect(node, ALICE), connect(node, BOB)
    assert "Boards/news" in [n for _, _, n in alice.list_folders()]
    alice.append("Boards/news", b"Subject: from alice\r\n\r\nhello board\r\n")
    alice.select_folder("Boards/news")
    alice.add_flags([1], [b"\\Seen"])
    assert bob.folder_status("Boards/news", ["UNSEEN", "MESSAGES"]) == {
        b"UNSEEN": 2, b"MESSAGES": 2}
    assert alice.folder_status("Boards/news", ["UNSEEN"])[b"UNSEEN"] == 1
    bob.select_folder("Boards/news")
    assert bob.search(["UNSEEN"]) == [1, 2]
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="NOPERM"):
        bob.add_flags([1], [b"\\Deleted"])  # moderators only (tests/security/test_boards.py)
    for c in (alice, bob):
        c.logout()


def test_imaplib_literal_and_uid_fetch(node: NodeProcess) -> None:
    imap = imaplib.IMAP4(*node.imap)
    imap.login(*BOB)
    typ, data = imap.append("INBOX", None, None, b"Subject: lit\r\n\r\n" + b"\xc3\xa9" * 10)
    assert typ == "OK" and b"APPENDUID" in data[0]
    imap.select("INBOX")
    typ, data = imap.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[TEXT])")
    assert typ == "OK" and data[0][1] == b"\xc3\xa9" * 10
    typ, data = imap.lsub('""', "*")
    assert typ == "OK" and any(b"INBOX" in d for d in data)
    typ, _ = imap.check()
    assert typ == "OK"
    imap.logout()


def test_uidplus_codes_on_the_wire(node: NodeProcess) -> None:
    out = raw_session(
        node, b"a APPEND INBOX {7+}\r\nS: 1\r\n\r\n", b"b APPEND INBOX {7+}\r\nS: 2\r\n\r\n",
        b"c SELECT INBOX\r\n", b"d UID COPY 1:2 Archive\r\n", b"e UID MOVE 2 Trash\r\n",
        b"f COPY 1 Nowhere\r\n",
    )
    text = out.decode()
    uidvalidity = text.split("a OK [APPENDUID ")[1].split()[0]
    assert "a OK [APPENDUID " + uidvalidity + " 1]" in text
    assert "b OK [APPENDUID " + uidvalidity + " 2]" in text
    assert "d OK [COPYUID " in text and " 1:2 1:2]" in text
    move = text.split("e OK")[0].rsplit("d OK", 1)[1]
    assert "* OK [COPYUID " in move and " 2 1]" in move and "* 2 EXPUNGE" in move
    assert "f NO [TRYCREATE]" in text
