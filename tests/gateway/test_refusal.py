"""A change the node refuses for want of the home role or a majority (NO [UNAVAILABLE]) leaves
no trace, so the gateway makes it again, on the home once one holds the lease, instead of
passing the refusal on: the client notices nothing. Real nodes, real signals, a raw client."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.gateway.rawimap import RawImap
from tests.gateway.replicated import ALICE, Pool, inbox, replicated, wait_for  # noqa: F401
from tests.gateway.test_failover import gateway_with, message, serving
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.timeout(180)


def test_a_change_refused_while_the_peers_are_stopped_is_made_once_they_are_back(
    replicated: Callable[..., Pool],  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    pool = replicated("abc")
    gw = gateway_with(gateway_factory, list(pool.nodes.values()))
    client = raw(gw.imap)
    client.login(*ALICE)
    body = message("refused once")
    answer = client.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(body), body))
    assert answer[-1].startswith(b"a OK"), answer
    client.command("s", "SELECT INBOX")
    home = serving(gw, ALICE[0], pool.nodes)
    others = [n for n in pool.nodes.values() if n is not home]
    for node in others:
        node.signal(signal.SIGSTOP)
    try:
        client.send(b"f STORE 1 +FLAGS (\\Flagged)\r\n")
        wait_for(lambda: "STORE refused on" in gw.log(), "the gateway to meet the refusal")
    finally:
        for node in others:
            node.signal(signal.SIGCONT)
    answer = client.until("f")
    assert answer[-1].startswith(b"f OK"), answer
    assert any(b"\\Flagged" in r for r in answer[:-1]), answer
    for node in pool.nodes.values():
        wait_for(lambda node=node: b"\\Flagged" in next(iter(inbox(node).values()))[0],
                 f"{node.node_id} to hold the flag")
