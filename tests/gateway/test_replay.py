"""Exactly once across failover: a change whose node died before answering is answered with the
original answer (the node-side XREPLAY contract), never done twice."""

from __future__ import annotations

import imaplib
import re
import signal
from collections.abc import Callable

import pytest

from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import RawImap, wait_until
from tests.gateway.replicated import Pool, replicated  # noqa: F401  (fixture)
from tests.gateway.test_failover import gateway_with, message, serving
from tests.replication.support import Pool as ReplicationPool
from tests.replication.support import make_pool  # noqa: F401  (fixture)
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def slow_acks(replicated: Callable[..., Pool]) -> Pool:  # noqa: F811
    """Three nodes whose acknowledgements may take long (a stopped peer is waited for)."""
    return replicated("abc", copy_timeout="60s")


def _archive_count(node: NodeProcess) -> int:
    with imaplib.IMAP4(*node.imap, timeout=30) as direct:
        direct.login(*ALICE)
        typ, data = direct.select("Archive", readonly=True)
        return int(data[0]) if typ == "OK" else -1


def test_the_move_race_gets_the_original_answer_and_one_copy(
    slow_acks: Pool, gateway_factory: Callable[..., GatewayProcess],
) -> None:
    nodes = slow_acks.nodes
    # A long hang_timeout: the peer must have applied the MOVE before the gateway moves there
    # (which node wins the race is the node side's business; this test is about the answer).
    gw = gateway_with(gateway_factory, list(nodes.values()), extra="hang_timeout = 5")
    client = RawImap(gw.imap)
    try:
        client.login(*ALICE)
        body = message("to move")
        answer = client.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(body), body))
        assert answer[-1].startswith(b"a OK")
        appended = re.search(rb"\[APPENDUID \d+ (\d+)\]", answer[-1])
        assert appended is not None, answer
        uid = appended.group(1)
        assert b"* 1 EXISTS\r\n" in client.command("s", "SELECT INBOX")
        s = serving(gw, ALICE[0], nodes)
        peer, other = (n for n in nodes.values() if n is not s)
        other.signal(signal.SIGSTOP)
        peer.signal(signal.SIGSTOP)
        # S commits the MOVE and ships it to the stopped peer, then waits for the ack.
        client.send(b"m MOVE 1 Archive\r\n")
        wait_until(lambda: _archive_count(s) == 1, "S to commit the MOVE")
        s.signal(signal.SIGSTOP)  # it never answers: the gateway must find it hung
        peer.signal(signal.SIGCONT)  # the peer applies the MOVE it was sent
        other.signal(signal.SIGCONT)  # a majority is up again: changes can be acknowledged
        wait_until(lambda: _archive_count(peer) == 1, "the peer to apply the MOVE")
        answer = client.until("m")
        assert answer.count(b"* 1 EXPUNGE\r\n") == 1, answer
        assert any(re.search(rb"\[COPYUID \d+ %s \d+\]" % uid, r) for r in answer), answer
        assert answer[-1].startswith(b"m OK"), answer
        assert "hung" in gw.log()
        selected = client.command("t", "SELECT Archive")
        assert b"* 1 EXISTS\r\n" in selected, selected
    finally:
        client.close()


def _uids(node: NodeProcess) -> list[int]:
    with imaplib.IMAP4(*node.imap, timeout=30) as direct:
        direct.login(*ALICE)
        direct.select("INBOX", readonly=True)
        _, data = direct.uid("SEARCH", "ALL")
        return [int(u) for u in data[0].split()]


def test_a_hung_node_continued_after_the_replay_leaves_one_copy_everywhere(
    make_pool: Callable[..., ReplicationPool],  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """SIGSTOP mid-APPEND (the node has made the message and waits for its copies), failover
    and replay elsewhere, SIGCONT: the two runs of one replay id meet on every node and one
    copy is left, the one whose APPENDUID the client was given."""
    # S's links are paused before the APPEND, so S cannot renew its home lease: the APPEND
    # must reach S while the lease S took for a change just before still runs. The default
    # (1.4 s) was too short for that on a loaded machine: S waited for a lease it could not
    # get and made nothing.
    pool = make_pool(proxied=True, copy_timeout="60s", replication_extra='lease = "3s"\n')
    nodes = pool.nodes
    gw = gateway_with(gateway_factory, list(nodes.values()))
    client = RawImap(gw.imap)
    try:
        client.login(*ALICE)
        assert client.command("c", "CREATE Scratch")[-1].startswith(b"c OK")  # S is home now
        s = serving(gw, ALICE[0], nodes)
        quiet = [p for (i, j), p in pool.proxies.items() if s.node_id in (i, j)]
        for proxy in quiet:  # S's links stay up but carry nothing: its copies cannot be made
            proxy.pause()
        body = message("once")
        client.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(body), body))
        wait_until(lambda: len(_uids(s)) == 1, "S to make the message")
        s.signal(signal.SIGSTOP)
        answer = client.until("a")
        assert len(answer) == 1 and answer[0].startswith(b"a OK [APPENDUID "), answer
        appended = re.search(rb"\[APPENDUID \d+ (\d+)\]", answer[0])
        assert appended is not None
        assert "hung" in gw.log()
        s.signal(signal.SIGCONT)
        for proxy in quiet:
            proxy.resume()

        def settled() -> bool:
            held = [_uids(n) for n in nodes.values()]
            return all(h == held[0] for h in held) and len(held[0]) > 0

        wait_until(settled, "the nodes to agree", deadline=60)
        for node in nodes.values():
            assert _uids(node) == [int(appended.group(1))], node.node_id
        assert b"* 1 EXISTS\r\n" in client.command("s", "SELECT INBOX")
    finally:
        client.close()
