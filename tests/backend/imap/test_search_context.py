"""SEARCHRES (RFC 5182) and CONTEXT=SEARCH (RFC 5267) on a node with a plain socket client:
RETURN (SAVE) and `$`, PARTIAL, UPDATE contexts told of other sessions' changes, CANCELUPDATE."""

from __future__ import annotations

import time
import uuid

from tests.backend.imap.test_compliance import Client, client
from tests.support.nodes import NodeProcess


def _mailbox(c: Client, subjects: list[str]) -> str:
    name = f"c{uuid.uuid4().hex[:8]}"
    c.run(f"CREATE {name}")
    for subject in subjects:
        body = f"Subject: {subject}\r\n\r\n{uuid.uuid4()}\r\n"
        c.run(f"APPEND {name} {{{len(body)}+}}\r\n{body}")
    return name


def _poll(c: Client, wanted: str) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = c.run("NOOP")
        if any(wanted in line for line in lines):
            return lines
        time.sleep(0.05)  # polling with a deadline
    raise AssertionError(f"no {wanted!r}")


def test_saved_result_feeds_later_commands(node: NodeProcess) -> None:
    with client(node) as one:
        box = _mailbox(one, ["x", "y", "x", "z", "x"])
        one.run(f"SELECT {box}")
        caps = one.run("CAPABILITY")[0]
        assert "SEARCHRES" in caps and "CONTEXT=SEARCH" in caps and "CONTEXT=SORT" in caps
        assert one.run("SEARCH RETURN (SAVE) SUBJECT x") == []  # SAVE alone answers nothing
        assert one.run("SEARCH $") == ["* SEARCH 1 3 5"]
        one.run("STORE $ +FLAGS.SILENT (\\Flagged)")
        assert one.run("SEARCH FLAGGED") == ["* SEARCH 1 3 5"]
        assert one.run("SEARCH RETURN (SAVE MIN) SUBJECT x")[0].endswith("MIN 1")
        assert one.run("FETCH $ (FLAGS)")[0].startswith("* 1 FETCH")
        assert len(one.run("FETCH $ (FLAGS)")) == 1  # only MIN was saved
        one.run("SEARCH RETURN (SAVE) UID 1:*")
        one.run("STORE 2 +FLAGS.SILENT (\\Deleted)")
        one.run("EXPUNGE")
        assert one.run("SEARCH $") == ["* SEARCH 1 2 3 4"]  # the expunged one left the set
        one.run("UNSELECT")
        one.run(f"SELECT {box}")
        assert one.run("SEARCH $") == ["* SEARCH"]  # a new selection forgets it


def test_partial_on_search_and_sort(node: NodeProcess) -> None:
    with client(node) as one:
        box = _mailbox(one, ["c", "a", "b", "d"])
        one.run(f"SELECT {box}")
        assert one.run("SEARCH RETURN (PARTIAL 2:3 COUNT) ALL") == [
            f'* ESEARCH (TAG "c{one.count}") COUNT 4 PARTIAL (2:3 2:3)']
        assert one.run("SORT RETURN (PARTIAL 1:2) (SUBJECT) UTF-8 ALL")[0].endswith(
            "PARTIAL (1:2 2:3)")
        assert one.run("SEARCH RETURN (PARTIAL 9:10) ALL")[0].endswith("PARTIAL (9:10 NIL)")
        one.sock.sendall(b"b1 SEARCH RETURN (PARTIAL 1:*) ALL\r\n")
        assert one.reader.readline().startswith(b"b1 BAD")
        assert one.run("NOOP") == []


def test_update_context_follows_another_session(node: NodeProcess) -> None:
    with client(node) as one, client(node) as two:
        box = _mailbox(one, ["k", "k", "k"])
        one.run(f"SELECT {box}")
        two.run(f"SELECT {box}")
        tag = f"c{one.count + 1}"
        assert one.run("SEARCH RETURN (UPDATE ALL) SEEN") == [f'* ESEARCH (TAG "{tag}")']
        two.run("STORE 2 +FLAGS (\\Seen)")
        assert f'* ESEARCH (TAG "{tag}") ADDTO (0 2)' in _poll(one, "ADDTO")
        body = f"Subject: k\r\n\r\n{uuid.uuid4()}\r\n"
        two.run(f"APPEND {box} (\\Seen) {{{len(body)}+}}\r\n{body}")
        lines = _poll(one, "ADDTO")
        assert lines.index("* 4 EXISTS") < lines.index(f'* ESEARCH (TAG "{tag}") ADDTO (0 4)')
        two.run("STORE 2 +FLAGS (\\Deleted)")
        two.run("EXPUNGE")
        lines = _poll(one, "EXPUNGE")
        # REMOVEFROM names the message as the client knew it, before EXPUNGE renumbers
        assert lines.index(f'* ESEARCH (TAG "{tag}") REMOVEFROM (0 2)') < lines.index(
            "* 2 EXPUNGE")
        one.run(f'CANCELUPDATE "{tag}"')
        two.run("STORE 1 +FLAGS (\\Seen)")
        assert not any("ESEARCH" in line for line in _poll(one, "FETCH"))
        one.sock.sendall(f'b1 CANCELUPDATE "{tag}"\r\n'.encode())
        assert one.reader.readline().startswith(b"b1 BAD")


def test_update_contexts_are_capped(node: NodeProcess) -> None:
    with client(node) as one:
        box = _mailbox(one, ["a"])
        one.run(f"SELECT {box}")
        first = f"c{one.count + 1}"
        for _ in range(10):
            assert not any("NOUPDATE" in x for x in one.run("SEARCH RETURN (UPDATE) ALL"))
        assert any("NOUPDATE" in x for x in one.run("SEARCH RETURN (UPDATE) ALL"))
        one.run(f"CANCELUPDATE {first}")  # room for one more
        assert not any("NOUPDATE" in x for x in one.run("SEARCH RETURN (UPDATE) ALL"))
        # refused, but answered (RFC 5267 4.3.1): sorted positions are not kept current
        sorted_ = one.run("SORT RETURN (UPDATE ALL) (DATE) UTF-8 ALL")
        assert sorted_[0].endswith("ALL 1") and "NOUPDATE" in sorted_[1]
        assert "NOUPDATE" in one.run("SEARCH RETURN (UPDATE MIN) ALL")[1]


def test_sort_keys_come_from_the_header_alone() -> None:
    from mailmux.backend.imap.session import _head

    boundary = b"b1"
    raw = (b"Subject: Re: big\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
           + b"".join(b"--%s\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % (boundary, i)
                      for i in range(50)) + b"--b1--\r\n")
    head = _head(raw)
    assert head.text("subject") == "Re: big"
    assert not head.children  # the 50 parts were never split
    assert _head(b"Subject: only a header\n").text("subject") == "only a header"
    assert _head(None).text("subject") is None
