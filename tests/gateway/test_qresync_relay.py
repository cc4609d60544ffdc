"""QRESYNC through the gateway: SELECT ... (QRESYNC ...) relayed with its VANISHED (EARLIER),
and after failover a client that enabled QRESYNC is told of expunges as VANISHED, never EXPUNGE
(RFC 7162 3.2.10). Real nodes, real signals, a raw-socket client."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Callable

import pytest

from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import RawImap
from tests.gateway.replicated import Pool, inbox, replicated, wait_for  # noqa: F401
from tests.gateway.test_failover import gateway_with, message, serving
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pool(replicated: Callable[..., Pool]) -> Pool:  # noqa: F811
    return replicated("abc")


def _code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        if m := re.search(rb"\[" + name + rb" (\d+)\]", line):
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines}")


def test_expunge_found_at_failover_is_told_as_vanished(
    pool: Pool, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    a, b = pool.nodes["a"], pool.nodes["b"]
    gw = gateway_with(gateway_factory, [a, b], extra="catchup_timeout = 30")
    with imaplib.IMAP4(*a.imap, timeout=60) as direct:
        direct.login(*ALICE)
        for i in range(1, 6):
            assert direct.append("INBOX", "", None, message(f"m{i}"))[0] == "OK"
    wait_for(lambda: all(len(inbox(n)) == 5 for n in pool.nodes.values()),
             "every node to hold the 5 messages")
    uids = sorted(u for u in inbox(a) if u)
    client = raw(gw.imap)
    client.login(*ALICE)
    assert client.command("q", "ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    selected = client.command("s", "SELECT INBOX")
    uidvalidity, modseq = _code(selected, b"UIDVALIDITY"), _code(selected, b"HIGHESTMODSEQ")
    s = serving(gw, ALICE[0], pool.nodes)  # whichever the gateway chose
    other = b if s is a else a
    # Another client expunges message 3 where it is durable beyond S; S dies before this
    # client hears of it, so the gateway must tell it after failover.
    with imaplib.IMAP4(*other.imap, timeout=60) as direct:
        direct.login(*ALICE)
        direct.select("INBOX")
        direct.uid("STORE", str(uids[2]), "+FLAGS.SILENT", "(\\Deleted)")
        direct.expunge()
    wait_for(lambda: uids[2] not in inbox(pool.nodes["c"]), "C to hold the expunge")
    s.kill()
    answer = client.command("n", "NOOP")
    assert b"* VANISHED %d\r\n" % uids[2] in answer, answer
    assert not any(b"EXPUNGE" in line for line in answer), answer
    assert answer[-1].startswith(b"n OK"), answer
    fetched = client.command("f", "FETCH 3 (UID)")
    assert fetched[0] == b"* 3 FETCH (UID %d)\r\n" % uids[3], fetched
    # and SELECT ... (QRESYNC ...) is relayed with what changed since the client's MODSEQ
    again = client.command("r", f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))")
    assert b"* VANISHED (EARLIER) %d\r\n" % uids[2] in again, again
    assert again[-1].startswith(b"r OK"), again
