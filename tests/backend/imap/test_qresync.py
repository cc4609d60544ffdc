"""QRESYNC (RFC 7162) on a node, with a plain socket client: ENABLE, SELECT ... (QRESYNC ...)
with VANISHED (EARLIER) and FETCH of what changed, UID FETCH ... (CHANGEDSINCE n VANISHED),
and VANISHED instead of EXPUNGE once enabled."""

from __future__ import annotations

import re
import uuid

from tests.backend.imap.test_compliance import Client, client
from tests.support.nodes import NodeProcess


def _mailbox(c: Client, n: int) -> str:
    name = f"q{uuid.uuid4().hex[:8]}"
    c.run(f"CREATE {name}")
    for _ in range(n):
        body = f"Subject: q\r\n\r\n{uuid.uuid4()}\r\n"
        c.run(f"APPEND {name} {{{len(body)}+}}\r\n{body}")
    return name


def _code(lines: list[str], name: str) -> int:
    for line in lines:
        if m := re.search(rf"\[{name} (\d+)\]", line):
            return int(m.group(1))
    raise AssertionError(f"no {name} in {lines}")


def test_select_qresync_reports_vanished_and_changed(node: NodeProcess) -> None:
    with client(node) as one, client(node) as two:
        box = _mailbox(one, 6)
        one.run("ENABLE QRESYNC")
        selected = one.run(f"SELECT {box}")
        uidvalidity, modseq = _code(selected, "UIDVALIDITY"), _code(selected, "HIGHESTMODSEQ")
        uids = [int(re.search(r"UID (\d+)", x).group(1))  # type: ignore[union-attr]
                for x in one.run("FETCH 1:* (UID)")]
        one.run("UNSELECT")
        # another session changes the mailbox while this client is away
        two.run(f"SELECT {box}")
        two.run("STORE 2,5 +FLAGS (\\Deleted)")
        two.run("EXPUNGE")
        two.run("STORE 3 +FLAGS (\\Flagged)")
        assert two.run("ENABLE QRESYNC")[0] == "* ENABLED QRESYNC"
        back = one.run(f"SELECT {box} (QRESYNC ({uidvalidity} {modseq}))")
        assert f"* VANISHED (EARLIER) {uids[1]},{uids[4]}" in back
        changed = [x for x in back if " FETCH " in x]
        assert len(changed) == 1 and f"UID {uids[3]}" in changed[0]  # seq 3 after expunges
        assert "\\Flagged" in changed[0] and "MODSEQ (" in changed[0]
        assert "* 4 EXISTS" in back
        # known-uids narrows VANISHED to what the client still holds
        narrowed = one.run(f"SELECT {box} (QRESYNC ({uidvalidity} {modseq} {uids[4]}:*))")
        assert f"* VANISHED (EARLIER) {uids[4]}" in narrowed
        # another UIDVALIDITY: a plain SELECT, nothing resynchronised
        other = one.run(f"SELECT {box} (QRESYNC ({uidvalidity + 1} {modseq}))")
        assert not any("VANISHED" in x or "FETCH" in x for x in other)


def test_vanished_replaces_expunge_once_enabled(node: NodeProcess) -> None:
    with client(node) as one, client(node) as two:
        box = _mailbox(one, 4)
        one.run("ENABLE QRESYNC")
        one.run(f"SELECT {box}")
        uids = [int(re.search(r"UID (\d+)", x).group(1))  # type: ignore[union-attr]
                for x in one.run("FETCH 1:* (UID)")]
        one.run("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert one.run("EXPUNGE")[-1] == f"* VANISHED {uids[0]}"
        two.run(f"SELECT {box}")
        two.run("STORE 2 +FLAGS (\\Deleted)")
        assert two.run("EXPUNGE") == ["* 2 EXPUNGE"]  # QRESYNC not enabled there
        assert f"* VANISHED {uids[2]}" in one.run("NOOP")


def test_uid_fetch_changedsince_vanished(node: NodeProcess) -> None:
    with client(node) as one:
        box = _mailbox(one, 5)
        one.run("ENABLE QRESYNC")
        selected = one.run(f"SELECT {box}")
        modseq = _code(selected, "HIGHESTMODSEQ")
        uids = [int(re.search(r"UID (\d+)", x).group(1))  # type: ignore[union-attr]
                for x in one.run("FETCH 1:* (UID)")]
        one.run("STORE 1,4 +FLAGS.SILENT (\\Deleted)")
        one.run("EXPUNGE")
        one.run("STORE 2 +FLAGS.SILENT (\\Seen)")
        lines = one.run(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
        assert lines[0] == f"* VANISHED (EARLIER) {uids[0]},{uids[3]}"
        assert len(lines) == 2 and f"UID {uids[2]}" in lines[1] and "\\Seen" in lines[1]
        within = one.run(f"UID FETCH {uids[3]}:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
        assert within == [f"* VANISHED (EARLIER) {uids[3]}"]


def test_qresync_misuse_is_bad_and_session_goes_on(node: NodeProcess) -> None:
    with client(node) as one:
        box = _mailbox(one, 1)
        one.sock.sendall(f"b1 SELECT {box} (QRESYNC (1 1))\r\n".encode())
        assert one.reader.readline().startswith(b"b1 BAD")
        one.run(f"SELECT {box}")
        one.sock.sendall(b"b2 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
        assert one.reader.readline().startswith(b"b2 BAD")  # QRESYNC not enabled
        one.run("ENABLE QRESYNC")
        one.sock.sendall(b"b3 FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
        assert one.reader.readline().startswith(b"b3 BAD")  # VANISHED needs UID FETCH
        assert one.run("NOOP") == []
