"""Replication between real node processes on loopback, each with its own data directory."""

from __future__ import annotations

import imaplib
import json
import shutil
from collections.abc import Callable

from tests.replication.support import (
    ALICE,
    Pool,
    _can_login,
    deliver,
    inbox,
    make_pool,
    wait_for,
)
from tests.support.nodes import NodeProcess

# tests/gateway imports these from here
__all__ = ["Pool", "inbox", "make_pool", "wait_for"]


def test_delivery_appears_on_every_node_with_identical_uid(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    assert deliver(a, "hello")[0] == 250
    with imaplib.IMAP4(*a.imap) as imap:
        imap.login(*ALICE)
        imap.select("INBOX")
        imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    expected = inbox(a)
    for n in (b, c):
        wait_for(lambda n=n: inbox(n) == expected, f"replica {n.node_id}")


def test_high_importance_survives_sigkill_of_the_accepting_node(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    assert deliver(a, "urgent", "Importance: high\r\n")[0] == 250
    a.kill()
    for n in (b, c):  # acknowledged ⇒ already there: no waiting
        assert any(b"urgent" in body for uid, (_, body) in inbox(n).items() if uid)


def test_normal_delivery_refused_when_alone_and_nothing_lost(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    b.kill()
    c.kill()
    code, reply = deliver(a, "lonely")
    assert code == 451 and reply.startswith(b"4.3.0"), reply
    assert len(inbox(a)) == 1  # only the status entry: nothing half-accepted
    # Alone, a is a minority: once the lease it held ran out (until then it is rightly still
    # the home: nobody else can be) it can be nobody's home, so even bulk mail (W = 1) waits.
    wait_for(lambda: _minority(a), "a's lease running out")
    assert deliver(a, "bulk mail", "Precedence: bulk\r\n")[0] == 451


def test_wiped_node_catches_up(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool("abc")
    a, _, c = pool.nodes.values()
    for i in range(15):
        assert deliver(a, f"m{i}")[0] == 250
    expected = inbox(a)
    wait_for(lambda: inbox(c) == expected, "c before the wipe")
    assert c.stop() == 0
    shutil.rmtree(c.data_dir)
    c.data_dir.mkdir(mode=0o700)  # a node requires it private
    c.start()
    wait_for(lambda: _can_login(c) and inbox(c) == expected, "c after the wipe")
    status = c.cli("replication", "status", "--json")
    assert status.returncode == 0, status.stderr
    peers = {row["peer"]: row for row in json.loads(status.stdout)["peers"]}
    assert set(peers) == {"a", "b"}


def _store(node: NodeProcess, *changes: tuple[str, str]) -> None:
    with imaplib.IMAP4(*node.imap) as imap:
        imap.login(*ALICE)
        imap.select("INBOX")
        for change in changes:
            assert imap.uid("STORE", "1:*", *change)[0] == "OK"


def _messages(node: NodeProcess) -> dict[int, tuple[bytes, bytes]]:
    return {uid: value for uid, value in inbox(node).items() if uid}


def _cut_off(pool: Pool, node: str) -> None:
    """Cut every link to and from `node`: it is alone, the others are a majority."""
    for (source, target), proxy in pool.proxies.items():
        if node in (source, target):
            proxy.cut()


def _minority(node: NodeProcess) -> bool:
    from tests.replication.test_home import _who

    return _who(node).home == ""  # its own lease (if it had one) ran out, none granted


def test_flag_changes_during_a_partition_converge(make_pool: Callable[..., Pool]) -> None:
    """The side cut off from the majority refuses changes (it could not be the user's home);
    the majority side's changes reach it after the heal."""
    pool = make_pool("abc", proxied=True, normal=1)
    a, b, c = pool.nodes.values()
    assert deliver(a, "shared")[0] == 250
    _store(a, ("+FLAGS", "(\\Seen \\Flagged)"))
    wait_for(lambda: inbox(a) == inbox(b) == inbox(c), "the flagged message on b and c")
    _cut_off(pool, "a")
    wait_for(lambda: _minority(a), "a knowing it is alone")
    with imaplib.IMAP4(*a.imap) as imap:
        imap.login(*ALICE)
        imap.select("INBOX")
        status, answer = imap.uid("STORE", "1:*", "-FLAGS", "(\\Seen)")
        assert status == "NO" and b"[UNAVAILABLE]" in answer[0]
    _store(b, ("-FLAGS", "(\\Seen \\Flagged)"), ("+FLAGS", "(\\Seen $B)"))
    assert inbox(a) != inbox(b)
    pool.heal()
    wait_for(lambda: inbox(a) == inbox(b) == inbox(c), "convergence")
    [(flags, _)] = _messages(a).values()
    assert flags == b"$B \\Seen"


def test_mail_on_both_sides_of_a_partition_keeps_its_uids(
    make_pool: Callable[..., Pool],
) -> None:
    """Only the majority side takes mail (451 on the other), so no UID is ever given twice:
    a UID a client was told names that message, on every node, after the heal too."""
    pool = make_pool("abc", proxied=True, normal=1)
    a, b, c = pool.nodes.values()
    assert deliver(b, "before")[0] == 250
    wait_for(lambda: inbox(a) == inbox(b) == inbox(c), "the first message everywhere")
    _cut_off(pool, "a")
    wait_for(lambda: _minority(a), "a knowing it is alone")
    assert deliver(a, "only on a")[0] == 451
    assert deliver(b, "only on b")[0] == 250
    seen_b = _messages(b)
    pool.heal()
    wait_for(lambda: inbox(a) == inbox(b) == inbox(c) and len(_messages(a)) == 2,
             "convergence")
    final = _messages(a)
    assert seen_b == final  # every UID still names the message it named
    assert sorted(final) == [1, 2]
    uidnext = int(inbox(a)[0][0].split(b"UIDNEXT ")[1].split(b")")[0].split()[0])
    assert uidnext > max(final)
