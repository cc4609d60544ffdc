"""Session semantics imaptest checks, with a plain socket client: \\Recent, expunges held back
during FETCH and reported later, FLAGS for new keywords, the first HIGHESTMODSEQ."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.backend.imap.conftest import ALICE
from tests.support.nodes import NodeProcess


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.count = 0
        self.reader.readline()  # greeting

    def run(self, line: str) -> list[str]:
        """Untagged responses of one command; asserts it ended OK."""
        self.count += 1
        tag = f"c{self.count}"
        self.sock.sendall(f"{tag} {line}\r\n".encode())
        out: list[str] = []
        while True:
            got = self.reader.readline().decode().rstrip("\r\n")
            assert got, "connection closed"
            if got.startswith(tag + " "):
                assert got.startswith(f"{tag} OK"), got
                return out
            out.append(got)


@contextmanager
def client(node: NodeProcess) -> Iterator[Client]:
    with socket.create_connection(node.imap, timeout=20) as sock:
        c = Client(sock)
        try:
            c.run(f'LOGIN "{ALICE[0]}" "{ALICE[1]}"')
            yield c
        finally:
            c.reader.close()


def _append(c: Client, n: int) -> None:
    for _ in range(n):
        body = f"Subject: m\r\n\r\nbody {uuid.uuid4()}\r\n"
        c.run(f"APPEND INBOX {{{len(body)}+}}\r\n{body}")


def test_recent_belongs_to_the_first_selecting_session(node: NodeProcess) -> None:
    with client(node) as one, client(node) as two:
        _append(one, 2)
        assert "* 2 RECENT" in two.run("EXAMINE INBOX")  # looks, does not claim
        assert "* 2 RECENT" in one.run("SELECT INBOX")  # claims
        assert "* 0 RECENT" in two.run("SELECT INBOX")
        assert two.run("SEARCH RECENT") == ["* SEARCH"]
        assert one.run("SEARCH NEW") == ["* SEARCH 1 2"]
        assert "\\Recent" in one.run("FETCH 1 FLAGS")[0]
    with client(node) as one, client(node) as two, client(node) as third:
        one.run("SELECT INBOX")
        two.run("SELECT INBOX")
        _append(third, 1)  # new mail while both have INBOX selected: the first to look owns it
        assert _poll(one, "* 3 EXISTS")[-1] == "* 1 RECENT"
        assert _poll(two, "* 3 EXISTS")[-1] == "* 0 RECENT"


def _poll(c: Client, wanted: str) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = c.run("NOOP")
        if wanted in lines:
            return lines
        time.sleep(0.05)  # polling with a deadline
    raise AssertionError(f"no {wanted!r}")


def test_expunge_held_back_during_fetch_is_reported_on_check(node: NodeProcess) -> None:
    with client(node) as one, client(node) as two:
        _append(one, 3)
        one.run("SELECT INBOX")
        two.run("SELECT INBOX")
        one.run("STORE 2 +FLAGS (\\Deleted)")
        one.run("EXPUNGE")
        fetched = two.run("FETCH 1:3 (UID)")
        assert not any("EXPUNGE" in line for line in fetched)  # RFC 3501 7.4.1
        assert "* 2 EXPUNGE" in two.run("CHECK")
        assert len(two.run("FETCH 1:* (UID)")) == 2


def test_new_keyword_is_announced_with_flags(node: NodeProcess) -> None:
    with client(node) as one, client(node) as two:
        _append(one, 1)
        one.run("SELECT INBOX")
        two.run("SELECT INBOX")
        stored = one.run("STORE 1 +FLAGS (shiny)")
        assert stored[0].startswith("* FLAGS (") and "shiny" in stored[0]
        assert stored[1].startswith("* 1 FETCH")
        seen = two.run("NOOP")
        assert seen[0].startswith("* FLAGS (") and "shiny" in seen[0]


def test_first_condstore_command_reports_highestmodseq(node: NodeProcess) -> None:
    with client(node) as one:
        _append(one, 1)
        one.run("SELECT INBOX")
        first = one.run("FETCH 1 (MODSEQ)")
        assert first[0].startswith("* OK [HIGHESTMODSEQ ")
        assert not any("HIGHESTMODSEQ" in line for line in one.run("FETCH 1 (MODSEQ)"))


def test_multiappend_and_status_size(node: NodeProcess) -> None:
    with client(node) as one:
        assert "MULTIAPPEND" in one.run("CAPABILITY")[0] and "STATUS=SIZE" in one.run(
            "CAPABILITY")[0]
        one.sock.sendall(b"m1 APPEND INBOX (\\Seen) {3+}\r\nab\n {4+}\r\ncde\n\r\n")
        reply = one.reader.readline()
        assert reply.startswith(b"m1 OK [APPENDUID ") and b" 1:2]" in reply
        assert one.run("STATUS INBOX (MESSAGES SIZE)") == ['* STATUS "INBOX" (MESSAGES 2 SIZE 7)']


def test_within_older_and_younger(node: NodeProcess) -> None:
    with client(node) as one:
        for when in ('"01-Jan-2020 10:00:00 +0200" ', ""):
            body = f"Subject: w\r\n\r\n{uuid.uuid4()}\r\n"
            one.run(f"APPEND INBOX {when}{{{len(body)}+}}\r\n{body}")
        one.run("SELECT INBOX")
        assert one.run("SEARCH YOUNGER 3600") == ["* SEARCH 2"]
        assert one.run("SEARCH OLDER 3600") == ["* SEARCH 1"]
        assert one.run("SEARCH NOT YOUNGER 3600 SUBJECT w") == ["* SEARCH 1"]


def test_esort_returns_in_sort_order(node: NodeProcess) -> None:
    with client(node) as one:
        for subject in ("b", "a", "c"):
            body = f"Subject: {subject}\r\n\r\n{uuid.uuid4()}\r\n"
            one.run(f"APPEND INBOX {{{len(body)}+}}\r\n{body}")
        one.run("SELECT INBOX")
        assert one.run("SORT (SUBJECT) UTF-8 ALL") == ["* SORT 2 1 3"]
        assert one.run("SORT RETURN (MIN MAX ALL COUNT) (SUBJECT) UTF-8 ALL")[0].endswith(
            "MIN 2 MAX 3 COUNT 3 ALL 2,1,3")


def test_utf8_accept_names(node: NodeProcess) -> None:
    with client(node) as plain, client(node) as utf8:
        plain.run('CREATE "Äpfel"')  # raw UTF-8 on the wire, as mbsync 1.4 sends it
        assert '* LIST (\\HasNoChildren) "/" "&AMQ-pfel"' in plain.run('LIST "" "*pfel"')
        assert utf8.run("ENABLE UTF8=ACCEPT") == ["* ENABLED UTF8=ACCEPT"]
        listed = utf8.run('LIST "" "*pfel"')
        assert listed[0].endswith("{6}") and listed[1] == "Äpfel"
