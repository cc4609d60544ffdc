"""Replication between real node processes on loopback, each with its own data directory."""

from __future__ import annotations

import imaplib
import json
import shutil
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.nodes import NodeProcess
from tests.support.ports import free_port
from tests.support.tcp_proxy import TcpProxy

ALICE = ("alice@example.test", "alice-pw")
DEADLINE = 20.0


@dataclass
class Pool:
    nodes: dict[str, NodeProcess]
    proxies: dict[tuple[str, str], TcpProxy]

    def partition(self) -> None:
        for proxy in self.proxies.values():
            proxy.cut()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()


@pytest.fixture
def make_pool(node_factory: Callable[..., NodeProcess]) -> Iterator[Callable[..., Pool]]:
    proxies: list[TcpProxy] = []

    def make(ids: str = "abc", *, proxied: bool = False, normal: int = 2,
             copy_timeout: str = "2s") -> Pool:
        ports = {i: free_port() for i in ids}
        routes: dict[tuple[str, str], TcpProxy] = {}
        nodes = {}
        for i in ids:
            peers = []
            for j in ids:
                if j == i:
                    continue
                port = ports[j]
                if proxied:
                    routes[(i, j)] = TcpProxy(("127.0.0.1", ports[j]))
                    proxies.append(routes[(i, j)])
                    port = routes[(i, j)].port
                peers.append(f'"{j}=127.0.0.1:{port}"')
            nodes[i] = node_factory(i, replication=(
                "[replication]\n"
                f'listen = "127.0.0.1:{ports[i]}"\n'
                f"peers = [{', '.join(peers)}]\n"
                f'copy_timeout = "{copy_timeout}"\n'
                "[replication.copies]\n"
                f'high = "all"\nnormal = {normal}\nbulk = 1\n'
            ))
        first = nodes[ids[0]]
        first.add_user(*ALICE)
        for n in nodes.values():
            n.start()
        pool = Pool(nodes, routes)
        for n in nodes.values():
            wait_for(lambda n=n: _can_login(n), f"alice on {n.node_id}")
        return pool

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling with a deadline


def _can_login(node: NodeProcess) -> bool:
    try:
        with imaplib.IMAP4(*node.imap, timeout=5) as imap:
            imap.login(*ALICE)
            return True
    except imaplib.IMAP4.error:
        return False


def inbox(node: NodeProcess) -> dict[int, tuple[bytes, bytes]]:
    """uid → (flags, body) of alice's INBOX, plus UIDVALIDITY/UIDNEXT under key 0."""
    with imaplib.IMAP4(*node.imap, timeout=10) as imap:
        imap.login(*ALICE)
        imap.select("INBOX", readonly=True)
        _, data = imap.status("INBOX", "(UIDVALIDITY UIDNEXT)")
        out: dict[int, tuple[bytes, bytes]] = {0: (data[0], b"")}
        _, fetched = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        for item in fetched:
            if isinstance(item, tuple):
                head = item[0]
                uid = int(head.split(b"UID ")[1].split()[0])
                flags = head.split(b"FLAGS (")[1].split(b")")[0]
                # \Recent belongs to the node's sessions (RFC 3501), not to the replicated state
                kept = sorted(f for f in flags.split() if f != b"\\Recent")
                out[uid] = (b" ".join(kept), item[1])
        return out


def deliver(node: NodeProcess, subject: str, extra: str = "") -> tuple[int, bytes]:
    with smtplib.SMTP(*node.smtp, timeout=30) as smtp:
        try:
            smtp.sendmail("x@example.org", [ALICE[0]],
                          f"{extra}Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode())
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
    return 250, b""


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
    assert deliver(a, "bulk mail", "Precedence: bulk\r\n")[0] == 250


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
            assert imap.uid("STORE", "1", *change)[0] == "OK"


def test_flag_changes_during_a_partition_converge(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool("ab", proxied=True, normal=1)
    a, b = pool.nodes.values()
    assert deliver(a, "shared")[0] == 250
    _store(a, ("+FLAGS", "(\\Seen \\Flagged)"))
    wait_for(lambda: inbox(a) == inbox(b), "the flagged message on b")
    pool.partition()
    _store(a, ("-FLAGS", "(\\Seen)"), ("+FLAGS", "($A)"))
    _store(b, ("-FLAGS", "(\\Seen \\Flagged)"), ("+FLAGS", "(\\Seen $B)"))
    assert inbox(a) != inbox(b)
    pool.heal()
    wait_for(lambda: inbox(a) == inbox(b), "convergence")
    # Per flag, the latest change wins: b set \Seen again after a removed it, b removed
    # \Flagged, and the keywords each side added both stay.
    assert inbox(a)[1][0] == b"$A $B \\Seen"


def test_uid_conflict_after_a_partition(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool("ab", proxied=True, normal=1)
    a, b = pool.nodes.values()
    pool.partition()
    assert deliver(a, "only on a")[0] == 250
    assert deliver(b, "only on b")[0] == 250
    assert inbox(a)[1][1] != inbox(b)[1][1]  # UID 1 names different messages, for now
    pool.heal()
    wait_for(lambda: inbox(a) == inbox(b) and len(inbox(a)) == 3, "convergence")
    final = inbox(a)
    uids = [u for u in final if u]
    assert 1 not in uids  # the contested UID names nothing any more
    bodies = [final[u][1] for u in uids]
    assert any(b"only on a" in x for x in bodies) and any(b"only on b" in x for x in bodies)
    uidnext = int(final[0][0].split(b"UIDNEXT ")[1].split(b")")[0].split()[0])
    assert uidnext > max(uids)
