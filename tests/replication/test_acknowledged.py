"""Acknowledged means replicated; replays by identity across nodes (issue 7), on real processes.

Every change a client is told OK/250 about is on W nodes (here W = 2 of 3) when it is told, so
a SIGKILL of the serving node right after the answer loses nothing; a refused change leaves no
trace and cannot erase an accepted copy of the same bytes later; a replay id recorded on one
node is answered the same way by another once replicated.
"""

from __future__ import annotations

import imaplib
import signal
import smtplib
from collections.abc import Callable

import pytest

from tests.backend.imap.conftest import raw_session
from tests.replication.support import ALICE, Pool, deliver, inbox, wait_for
from tests.support.nodes import NodeProcess

BODY = b"Subject: twice\r\n\r\nthe same bytes, sent twice\r\n"


def _append(tag: bytes, replay: bytes = b"") -> bytes:
    return (tag + b" " + replay + b"APPEND INBOX {" + str(len(BODY)).encode() + b"+}\r\n"
            + BODY + b"\r\n")


def _tagged(out: bytes, tag: bytes) -> bytes:
    [line] = [ln for ln in out.split(b"\r\n") if ln.startswith(tag + b" ")]
    return line[len(tag) + 1:]


def _copies(node: NodeProcess, needle: bytes) -> int:
    return sum(1 for uid, (_, body) in inbox(node).items() if uid and needle in body)


def _flags(node: NodeProcess) -> dict[int, bytes]:
    return {uid: flags for uid, (flags, _) in inbox(node).items() if uid}


@pytest.mark.timeout(120)
def test_a_replay_id_is_answered_alike_on_another_node(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool("abc")
    a, b, _ = pool.nodes.values()
    first = _tagged(raw_session(a, _append(b"a1", b"XREPLAY gw-9 ")), b"a1")
    assert first.startswith(b"OK [APPENDUID")
    # W = 2: acknowledged means some other node holds it (and its replay id) already; b may
    # be the one that does not yet, so wait for it — the point is what b answers then.
    wait_for(lambda: _copies(b, b"the same bytes") == 1, "the message on b")
    again = _tagged(raw_session(b, _append(b"a2", b"XREPLAY gw-9 ")), b"a2")
    assert again == first
    assert _copies(b, b"the same bytes") == 1
    # Without an id the same bytes are a new message.
    assert _tagged(raw_session(b, _append(b"a3")), b"a3") != first
    wait_for(lambda: all(_copies(n, b"the same bytes") == 2 for n in pool.nodes.values()),
             "two messages everywhere")


@pytest.mark.timeout(120)
def test_store_then_sigkill_of_the_serving_node_keeps_the_flag(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    assert deliver(a, "answer me")[0] == 250
    wait_for(lambda: all(_copies(n, b"answer me") == 1 for n in (b, c)), "the message")
    [uid] = _flags(a)
    imap = imaplib.IMAP4(*a.imap, timeout=30)
    imap.login(*ALICE)
    imap.select("INBOX")
    assert imap.uid("STORE", str(uid), "+FLAGS", "(\\Answered)")[0] == "OK"
    a.kill()  # right after the OK
    imap.shutdown()
    # Acknowledged ⇒ on W = 2 nodes: one of b, c holds it without any waiting ...
    assert any(b"\\Answered" in _flags(n)[uid] for n in (b, c))
    # ... and the two survivors agree soon after, without a.
    wait_for(lambda: all(b"\\Answered" in _flags(n)[uid] for n in (b, c)),
             "the flag on b and c")


def _append_via_imap(node: NodeProcess) -> bytes:
    out = raw_session(node, _append(b"ap"))
    return _tagged(out, b"ap")


def _submit(node: NodeProcess, message: bytes) -> int:
    with smtplib.SMTP(*node.smtp, timeout=60) as smtp:
        try:
            smtp.sendmail("x@example.org", [ALICE[0]], message)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
    return 250


@pytest.mark.timeout(180)
@pytest.mark.parametrize("via", ["imap", "smtp"])
def test_a_refused_change_cannot_erase_the_copy_accepted_elsewhere(
    make_pool: Callable[..., Pool], via: str,
) -> None:
    """The issue's sequence: refused on a (peers stopped), accepted on b, a comes back."""
    pool = make_pool("abc", copy_timeout="1s")
    a, b, c = pool.nodes.values()
    for n in (b, c):
        n.signal(signal.SIGSTOP)
    try:
        if via == "imap":
            assert _append_via_imap(a).startswith(b"NO [UNAVAILABLE]")
        else:
            assert _submit(a, BODY) == 451
        a.signal(signal.SIGSTOP)
    finally:
        for n in (b, c):
            n.signal(signal.SIGCONT)
    try:
        if via == "imap":
            assert _append_via_imap(b).startswith(b"OK [APPENDUID")
        else:
            assert _submit(b, BODY) == 250
    finally:
        a.signal(signal.SIGCONT)
    # Every node ends with exactly the accepted copy: the refused one left nothing behind and
    # its compensation touched only itself.
    wait_for(lambda: all(_copies(n, b"the same bytes") == 1 for n in (a, b, c)),
             "one copy on every node")
    for n in pool.nodes.values():  # and it stays so once everything has been exchanged
        wait_for(lambda n=n: _quiet(n), f"{n.node_id} idle")
    assert [_copies(n, b"the same bytes") for n in (a, b, c)] == [1, 1, 1]


def _quiet(node: NodeProcess) -> bool:
    status = node.cli("replication", "status", "--json")
    return status.returncode == 0 and '"backlog": 0' in status.stdout.replace("\n", " ")
