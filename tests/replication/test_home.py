"""The home node per user (issue 7), on real processes: one node at a time commits a user's
changes, UIDs come in order whichever node a client talks to, the home moves when it dies,
a stopped home cannot commit beside its successor, and a minority refuses changes but reads.
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import signal
import smtplib
import socket
import time
from collections.abc import Callable

import pytest

from mailmux.backend.control.client import query
from mailmux.protocol.control.messages import WhoReply, WhoRequest
from tests.replication.support import ALICE, Pool, deliver, inbox, wait_for
from tests.support.nodes import SECRET, NodeProcess


def _message(subject: str) -> bytes:
    return f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


def _append(node: NodeProcess, subject: str) -> tuple[str, bytes]:
    with imaplib.IMAP4(*node.imap, timeout=30) as imap:
        imap.login(*ALICE)
        status, data = imap.append("INBOX", "", None, _message(subject))
        return status, data[0] or b""


def _uid(answer: bytes) -> int:
    found = re.search(rb"APPENDUID \d+ (\d+)", answer)
    assert found, answer
    return int(found.group(1))


def _who(node: NodeProcess) -> WhoReply:
    return asyncio.run(query(node.control, WhoRequest(ALICE[0]), SECRET.encode(), timeout=5))


@pytest.mark.timeout(120)
def test_uids_come_in_order_whichever_node_takes_the_append(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    uids = [_uid(_append(node, f"m{i}")[1]) for i, node in enumerate((a, b, c, a, c))]
    # Residue classes per node gave 3, 4, 2, 6, ... : a client that saw UIDNEXT 7 on a could
    # then meet a new message with UID 5 from c. The home gives them out in order.
    assert uids == [1, 2, 3, 4, 5]
    wait_for(lambda: inbox(a) == inbox(b) == inbox(c), "identical replicas")


@pytest.mark.timeout(120)
def test_who_names_the_home_and_another_node_takes_over_after_sigkill(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    assert _append(a, "first")[0] == "OK"
    for node in (a, b, c):
        wait_for(lambda n=node: _who(n).home == "a", f"{node.node_id} naming a as the home")
    epoch = _who(a).epoch
    a.kill()
    # b cannot commit until a's lease has run out at the acceptors, then it takes over,
    # after catching up: the next UID follows the one a gave out.
    status, answer = _append(b, "second")
    assert status == "OK" and _uid(answer) == 2
    for node in (b, c):
        wait_for(lambda n=node: _who(n).home == "b", f"{node.node_id} naming b as the home")
    assert _who(c).epoch > epoch


@pytest.mark.timeout(120)
def test_after_every_node_restarts_the_next_home_has_a_higher_epoch(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    assert _append(a, "first")[0] == "OK"
    assert _append(b, "second")[0] == "OK"  # a hands over to b: a second, higher epoch
    wait_for(lambda: _who(b).home == "b", "b as the home")
    before = _who(b).epoch
    assert before >= 2
    for node in (a, b, c):
        node.kill()  # the whole pool at once: no node remembers a lease in memory
    for node in (a, b, c):
        node.start()
    status, answer = _append(c, "third")
    assert status == "OK" and _uid(answer) == 3
    wait_for(lambda: _who(c).home == "c", "c as the home")
    # Epochs in memory only would restart at 1 here, below the terms before the restart,
    # and the clash rule ("the newer epoch keeps the UID") would pick the wrong message.
    assert _who(c).epoch > before


@pytest.mark.timeout(300)
def test_in_five_nodes_with_w_2_a_new_home_never_reuses_an_acknowledged_uid(
    make_pool: Callable[..., Pool],
) -> None:
    """Five nodes, W = 2: the two copies of an acknowledged APPEND (on a and b) can both be
    outside the majority {c, d, e} that grants the next lease. Catching up with the granters
    alone, c would give the same UID to another message; it must learn the positions of
    N - W + 1 = 4 nodes first, so it refuses until a or b is back, then follows on."""
    pool = make_pool("abcde", proxied=True)
    a, c = pool.nodes["a"], pool.nodes["c"]
    assert _append(a, "one")[0] == "OK"
    for _attempt in range(3):
        with imaplib.IMAP4(*a.imap, timeout=30) as imap:
            imap.login(*ALICE)
            wait_for(lambda: _who(a).home == "a", "a as the home")
            pool.split({"a", "b"})  # a's lease has a moment left: W = 2 is a and b
            status, data = imap.append("INBOX", "", None, _message("two"))
        if status == "OK":
            break
        pool.heal()  # a's lease ran out before the copies came back: try again
        assert _append(a, "again")[0] == "OK"
    assert status == "OK", data
    acknowledged = _uid(data[0] or b"")
    status, answer = _append(c, "three")
    assert (status, b"[UNAVAILABLE]" in answer) == ("NO", True), (status, answer)
    pool.heal()
    deadline = time.monotonic() + 60
    while (result := _append(c, "three"))[0] != "OK":  # each attempt waits seconds itself
        assert time.monotonic() < deadline, "c never caught up after the heal"
    assert _uid(result[1]) == acknowledged + 1
    nodes = list(pool.nodes.values())
    wait_for(lambda: all(inbox(n) == inbox(a) for n in nodes), "identical replicas")
    assert b"body of two" in inbox(c)[acknowledged][1]


@pytest.mark.timeout(120)
def test_a_stopped_home_cannot_commit_beside_its_successor(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    assert _append(a, "one")[0] == "OK"
    wait_for(lambda: _who(a).home == "a", "a as the home")
    with socket.create_connection(a.imap, timeout=60) as raw:
        raw.recv(1024)
        raw.sendall(b"l LOGIN " + ALICE[0].encode() + b" " + ALICE[1].encode() + b"\r\n")
        _read_until(raw, b"l ")
        a.signal(signal.SIGSTOP)
        try:
            body = _message("from the stopped home")
            # Sits in a's socket until a runs again.
            raw.sendall(b"x APPEND INBOX {" + str(len(body)).encode() + b"+}\r\n" + body
                        + b"\r\n")
            uids = [_uid(_append(b, f"on b {i}")[1]) for i in range(2)]
            assert uids == [2, 3]
        finally:
            a.signal(signal.SIGCONT)
        answer = _read_until(raw, b"x ")
    # Back from its pause a no longer holds the lease: it must win it again (after b hands
    # over and a has caught up) or refuse; it can never reuse UID 2 or 3.
    if b"x OK" in answer:
        assert _uid(answer) == 4
    else:
        assert b"x NO [UNAVAILABLE]" in answer
    wait_for(lambda: inbox(a) == inbox(b) == inbox(c), "identical replicas")
    assert len(inbox(b)) - 1 == (4 if b"x OK" in answer else 3)


def _read_until(raw: socket.socket, tag: bytes) -> bytes:
    data = b""
    while not any(line.startswith(tag) for line in data.split(b"\r\n")):
        chunk = raw.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.timeout(120)
def test_a_minority_node_serves_reads_and_refuses_changes(
    make_pool: Callable[..., Pool],
) -> None:
    # normal = 1: the copies alone would let a lone node accept; the lease must refuse.
    pool = make_pool("abc", normal=1)
    a, b, c = pool.nodes.values()
    assert deliver(a, "kept")[0] == 250
    wait_for(lambda: len(inbox(b)) == len(inbox(c)) == 2, "the message on b and c")
    b.kill()
    c.kill()
    wait_for(lambda: _who(a).home == "", "a's lease running out")
    with imaplib.IMAP4(*a.imap, timeout=30) as imap:
        imap.login(*ALICE)
        imap.select("INBOX")
        status, data = imap.uid("FETCH", "1:*", "(FLAGS BODY[])")
        assert status == "OK" and b"body of kept" in data[0][1]
        flags = imap.uid("FETCH", "1:*", "(FLAGS)")[1][0]
        assert b"\\Seen" not in flags  # BODY[] could not set \Seen: it acted as BODY.PEEK[]
        status, answer = imap.append("INBOX", "", None, _message("refused"))
        assert status == "NO" and b"[UNAVAILABLE]" in answer[0]
        status, answer = imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        assert status == "NO" and b"[UNAVAILABLE]" in answer[0]
        assert imap.noop()[0] == "OK"  # the session keeps working
    with smtplib.SMTP(*a.smtp, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("x@example.org", [ALICE[0]], _message("refused too"))
        assert refused.value.smtp_code == 451
    assert len(inbox(a)) == 2
