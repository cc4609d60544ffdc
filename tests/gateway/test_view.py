"""The client's view survives failover exactly: the same message under the same number, and no
response relayed twice. Real nodes, real signals, a raw-socket client."""

from __future__ import annotations

import imaplib
import re
import signal
from collections.abc import Callable

import pytest

from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import RawImap
from tests.gateway.replicated import Pool, inbox, replicated, wait_for  # noqa: F401
from tests.gateway.test_failover import gateway_with, message, serving
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pool(replicated: Callable[..., Pool]) -> Pool:  # noqa: F811
    return replicated("abc")


def _append(client: RawImap, tag: str, body: bytes) -> int:
    """The new message's UID (nodes give out UIDs in residue classes: not 1, 2, 3...)."""
    answer = client.command(tag, b"APPEND INBOX {%d+}\r\n%s" % (len(body), body))
    assert answer[-1].startswith(tag.encode() + b" OK"), answer
    found = re.search(rb"APPENDUID \d+ (\d+)", answer[-1])
    assert found, answer
    return int(found.group(1))


def _uids(node: NodeProcess) -> list[int]:
    return sorted(u for u in inbox(node) if u)


def test_a_lagged_replica_serves_the_messages_the_client_means(
    pool: Pool, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    s, lagging, m = pool.nodes["a"], pool.nodes["b"], pool.nodes["c"]
    # The gateway knows S and L only; M holds the second copy of everything S acknowledges.
    gw = gateway_with(gateway_factory, [s, lagging], extra="catchup_timeout = 30")
    with imaplib.IMAP4(*s.imap, timeout=60) as direct:
        direct.login(*ALICE)
        for i in range(1, 11):
            assert direct.append("INBOX", "", None, message(f"m{i}"))[0] == "OK"
    wait_for(lambda: len(inbox(lagging)) == 10, "L to hold UIDs 1-10")
    uids = _uids(s)
    lagging.signal(signal.SIGSTOP)
    client = raw(gw.imap)
    client.login(*ALICE)
    assert serving(gw, ALICE[0], pool.nodes) is s
    assert b"* 10 EXISTS\r\n" in client.command("s", "SELECT INBOX")
    client.command("d", "STORE 3 +FLAGS.SILENT (\\Deleted)")
    assert client.command("e", "EXPUNGE")[:1] == [b"* 3 EXPUNGE\r\n"]
    newest = _append(client, "a", message("m11"))
    assert client.command("n", "NOOP")[-1].startswith(b"n OK")
    s.kill()
    lagging.signal(signal.SIGCONT)
    fetched = client.command("f", "FETCH 3 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert fetched[0].startswith(b"* 3 FETCH (UID %d " % uids[3]), fetched
    assert b"Subject: m4" in fetched[0]
    assert not any(b"EXISTS" in r or b"EXPUNGE" in r for r in fetched), fetched
    stored = client.command("t", "STORE 3 +FLAGS (\\Flagged)")
    assert stored[-1].startswith(b"t OK"), stored
    assert re.match(rb"\* 3 FETCH \(FLAGS \(.*\\Flagged", stored[0]), stored
    assert not any(b"EXISTS" in r for r in stored), stored
    last = client.command("l", "FETCH 10 (UID)")
    assert last[0] == b"* 10 FETCH (UID %d)\r\n" % newest, last
    assert "now on b" in gw.log()
    flagged = {uid for uid, (flags, _) in inbox(m).items() if uid and b"\\Flagged" in flags}
    wait_for(lambda: {uid for uid, (flags, _) in inbox(lagging).items()
                      if uid and b"\\Flagged" in flags} == {uids[3]}, "the flag on UID 4")
    assert flagged <= {uids[3]}


def test_an_expunge_alone_invents_no_exists(
    pool: Pool, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    s, lagging = pool.nodes["a"], pool.nodes["b"]
    gw = gateway_with(gateway_factory, [s, lagging], extra="catchup_timeout = 30")
    with imaplib.IMAP4(*s.imap, timeout=60) as direct:
        direct.login(*ALICE)
        for i in range(1, 11):
            assert direct.append("INBOX", "", None, message(f"m{i}"))[0] == "OK"
    wait_for(lambda: len(inbox(lagging)) == 10, "L to hold UIDs 1-10")
    uids = _uids(s)
    lagging.signal(signal.SIGSTOP)
    client = raw(gw.imap)
    client.login(*ALICE)
    assert b"* 10 EXISTS\r\n" in client.command("s", "SELECT INBOX")
    client.command("d", "STORE 3 +FLAGS.SILENT (\\Deleted)")
    assert client.command("e", "EXPUNGE")[:1] == [b"* 3 EXPUNGE\r\n"]
    # The expunge must be durable beyond S (M has it) for the view to be keepable at all.
    wait_for(lambda: uids[2] not in inbox(pool.nodes["c"]), "M to hold the expunge")
    s.kill()
    lagging.signal(signal.SIGCONT)
    answer = client.command("f", "FETCH 9 (UID)")
    assert answer == [b"* 9 FETCH (UID %d)\r\n" % uids[9], b"f OK FETCH completed\r\n"], answer


def test_fetch_replayed_after_a_partial_relay_sends_each_message_once(
    pool: Pool, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    nodes = pool.nodes
    gw = gateway_with(gateway_factory, list(nodes.values()), extra="catchup_timeout = 30")
    client = raw(gw.imap)
    client.login(*ALICE)
    filler = b"z" * (100 * 1024) + b"\r\n"
    bodies = [message(f"n{i}") + filler for i in range(1, 301)]
    uids = [_append(client, "a", body) for body in bodies]
    assert b"* 300 EXISTS\r\n" in client.command("s", "SELECT INBOX")
    client.send(b"f FETCH 1:300 (UID BODY.PEEK[])\r\n")
    got = [client.response() for _ in range(10)]
    serving(gw, ALICE[0], nodes).kill()
    got += client.until("f")
    fetches = [r for r in got if re.match(rb"\* \d+ FETCH", r)]
    seqs = [int(r.split()[1]) for r in fetches]
    assert sorted(seqs) == list(range(1, 301)), (len(seqs), got[-1])
    for r in fetches:
        seq = int(r.split()[1])
        body = bodies[seq - 1]
        assert r == b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (
            seq, uids[seq - 1], len(body), body), r[:200]
    assert got[-1] == b"f OK FETCH completed\r\n"
    assert "failing over" in gw.log()


def test_an_expunge_found_by_a_failover_during_fetch_waits_for_a_point_that_allows_it(
    pool: Pool, gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH. A second client expunges
    message 3 while the first one's node is stopped with a FETCH outstanding: the FETCH is
    answered in the client's numbering without message 3, STORE and SEARCH by number mean
    what they meant, and the EXPUNGE comes with the next command that may carry it."""
    nodes = pool.nodes
    gw = gateway_with(gateway_factory, list(nodes.values()))
    client = RawImap(gw.imap)
    try:
        client.login(*ALICE)
        for i in range(1, 7):
            body = message(f"m{i}")
            client.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(body), body))
        assert b"* 6 EXISTS\r\n" in client.command("s", "SELECT INBOX")
        listed = client.command("u", "FETCH 1:6 (UID)")[:-1]
        uids = [0] + [int(re.findall(rb"UID (\d+)", r)[0]) for r in listed]  # seq -> UID
        stopped = serving(gw, ALICE[0], nodes)
        stopped.signal(signal.SIGSTOP)
        other = next(n for n in nodes.values() if n is not stopped)
        with imaplib.IMAP4(*other.imap, timeout=60) as second:
            second.login(*ALICE)
            second.select("INBOX")
            assert second.store("3", "+FLAGS", "\\Deleted")[0] == "OK"
            assert second.expunge()[0] == "OK"
        answer = client.command("f", "FETCH 1:6 (FLAGS)")
        assert answer == [b"* %d FETCH (UID %d FLAGS ())\r\n" % (n, uids[n])
                          for n in (1, 2, 4, 5, 6)] + [b"f OK FETCH completed\r\n"], answer
        assert "hung" in gw.log()
        answer = client.command("t", "STORE 4 +FLAGS (\\Flagged)")
        assert answer == [b"* 4 FETCH (FLAGS (\\Flagged) UID %d)\r\n" % uids[4],
                          b"t OK STORE completed\r\n"], answer
        answer = client.command("q", "SEARCH FLAGGED")
        assert answer == [b"* SEARCH 4\r\n", b"q OK SEARCH completed\r\n"], answer
        answer = client.command("n", "NOOP")
        assert answer == [b"* 3 EXPUNGE\r\n", b"n OK NOOP completed\r\n"], answer
        answer = client.command("g", "FETCH 3 (UID FLAGS)")
        assert answer == [b"* 3 FETCH (UID %d FLAGS (\\Flagged))\r\n" % uids[4],
                          b"g OK FETCH completed\r\n"], answer
    finally:
        client.close()
