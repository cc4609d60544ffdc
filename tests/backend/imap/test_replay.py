"""Replays by identity, not by content (issue 7, slice 1) on one real node.

Two identical APPENDs are two messages and two COPYs of one message are two; a command the
gateway tags `XREPLAY <id>` takes effect once and is answered as the original was.
"""

from __future__ import annotations

import re

import imapclient

from tests.backend.imap.conftest import raw_session
from tests.support.nodes import NodeProcess

BODY = b"Subject: same\r\n\r\nidentical bytes\r\n"


def _append(tag: bytes, replay: bytes = b"", mailbox: bytes = b"INBOX") -> bytes:
    return (tag + b" " + replay + b"APPEND " + mailbox + b" {" + str(len(BODY)).encode()
            + b"+}\r\n" + BODY + b"\r\n")


def _tagged(out: bytes, tag: bytes) -> bytes:
    [line] = [ln for ln in out.split(b"\r\n") if ln.startswith(tag + b" ")]
    return line[len(tag) + 1:]


def _uids(node: NodeProcess, folder: str = "INBOX") -> list[int]:
    with imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=20) as c:
        c.login("alice@example.test", "alice-pw")
        c.select_folder(folder, readonly=True)
        return list(c.search("ALL"))


def test_identical_appends_are_two_messages(node: NodeProcess) -> None:
    out = raw_session(node, _append(b"a1"), _append(b"a2"))
    first, second = _tagged(out, b"a1"), _tagged(out, b"a2")
    assert first.startswith(b"OK [APPENDUID") and second.startswith(b"OK [APPENDUID")
    assert first != second
    assert len(_uids(node)) == 2


def test_two_copies_of_one_message_are_two(node: NodeProcess) -> None:
    out = raw_session(node, _append(b"a1"), b"s SELECT INBOX\r\n", b"c1 UID COPY 1 Archive\r\n",
                      b"c2 UID COPY 1 Archive\r\n")
    assert _tagged(out, b"c1") != _tagged(out, b"c2")
    assert len(_uids(node, "Archive")) == 2


def test_a_replayed_append_is_one_message_with_the_original_answer(node: NodeProcess) -> None:
    first = raw_session(node, _append(b"a1", b"XREPLAY gw-1.x_7 "))
    again = raw_session(node, _append(b"a2", b"XREPLAY gw-1.x_7 "))  # another session
    assert _tagged(first, b"a1") == _tagged(again, b"a2")
    assert re.match(rb"OK \[APPENDUID \d+ 1\] APPEND completed", _tagged(again, b"a2"))
    assert _uids(node) == [1]


def test_replayed_copy_move_store_expunge_create_take_effect_once(node: NodeProcess) -> None:
    raw_session(node, _append(b"a1"), _append(b"a2"))
    commands = [b"s SELECT INBOX\r\n",
                b"c XREPLAY r-copy UID COPY 1 Archive\r\n",
                b"m XREPLAY r-move UID MOVE 2 Drafts\r\n",
                b"f XREPLAY r-store UID STORE 1 -FLAGS.SILENT (\\Seen)\r\n",
                b"d XREPLAY r-del UID STORE 1 +FLAGS.SILENT (\\Deleted)\r\n",
                b"e XREPLAY r-exp EXPUNGE\r\n",
                b"k XREPLAY r-create CREATE Projects\r\n"]
    first = raw_session(node, *commands)
    # Meanwhile the user changes \Seen again: a replayed STORE must not undo that.
    raw_session(node, b"s SELECT Archive\r\n", b"x UID STORE 1 +FLAGS (\\Seen)\r\n")
    again = raw_session(node, *commands)
    for tag in (b"c", b"m", b"f", b"d", b"e", b"k"):
        assert _tagged(again, tag) == _tagged(first, tag), tag
        assert _tagged(again, tag).startswith(b"OK"), (tag, again)
    assert b"COPYUID" in _tagged(again, b"c")
    assert b"* OK [COPYUID" in again.split(b"\r\nm ")[0].rsplit(b"\r\nc ", 1)[1]
    assert len(_uids(node, "Archive")) == 1
    assert len(_uids(node, "Drafts")) == 1
    assert _uids(node) == []
    with imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=20) as c:
        c.login("alice@example.test", "alice-pw")
        assert sum(1 for f in c.list_folders() if f[2] == "Projects") == 1
        c.select_folder("Archive")
        [flags] = c.get_flags(c.search("ALL")).values()
        assert b"\\Seen" in flags


def test_a_replayed_store_answers_with_the_flags_and_modseq_it_gave(node: NodeProcess) -> None:
    """Found under faults: a STORE replayed after failover was answered OK alone, so the
    client kept the MODSEQ from before its own change (imaptest: "modseqs differ")."""
    raw_session(node, _append(b"a1"))
    commands = [b"s SELECT INBOX (CONDSTORE)\r\n",
                b"f XREPLAY r-flag STORE 1 +FLAGS (\\Flagged)\r\n"]
    first, again = raw_session(node, *commands), raw_session(node, *commands)
    pattern = rb"\* 1 FETCH \(FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)"
    [(flags, modseq)] = re.findall(pattern, first)
    [(flags_again, modseq_again)] = re.findall(pattern, again)
    assert b"\\Flagged" in flags and b"\\Flagged" in flags_again
    assert modseq_again == modseq
    assert _tagged(again, b"f") == _tagged(first, b"f")


def test_a_malformed_replay_prefix_is_bad_and_the_session_goes_on(node: NodeProcess) -> None:
    out = raw_session(node, b"x1 XREPLAY bad/id NOOP\r\n", b"x2 XREPLAY\r\n", b"x3 NOOP\r\n")
    assert _tagged(out, b"x1").startswith(b"BAD")
    assert _tagged(out, b"x2").startswith(b"BAD")
    assert _tagged(out, b"x3").startswith(b"OK")


def _multiappend(tag: bytes, replay: bytes) -> bytes:
    part = b" {" + str(len(BODY)).encode() + b"+}\r\n" + BODY
    return tag + b" " + replay + b"APPEND INBOX" + part + part + b"\r\n"


def test_a_replayed_multiappend_stores_each_message_once(node: NodeProcess) -> None:
    first = raw_session(node, _multiappend(b"m1", b"XREPLAY gw-2.m "))
    again = raw_session(node, _multiappend(b"m2", b"XREPLAY gw-2.m "))
    assert re.match(rb"OK \[APPENDUID \d+ 1:2\] APPEND completed", _tagged(first, b"m1"))
    assert _tagged(first, b"m1") == _tagged(again, b"m2")
    assert _uids(node) == [1, 2]
