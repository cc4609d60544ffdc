"""The gateway sends every session of a user to the user's home (issue 7): the node the
discovery answers name as the lease holder. With no live home it picks by load, and that node
claims; when the home dies the sessions move on and the next home takes over."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from imapclient import IMAPClient

from mailmux.backend.control.client import query
from mailmux.protocol.control.messages import WhoReply, WhoRequest
from tests.gateway.conftest import ALICE
from tests.gateway.replicated import Pool, replicated, wait_for  # noqa: F401  (fixture)
from tests.support.gateway import GatewayProcess
from tests.support.nodes import SECRET, NodeProcess

MESSAGE = b"Subject: home\r\n\r\nat home\r\n"


def _placed(log: str) -> list[str]:
    return re.findall(r"login of alice@example\.test on (\w+)", log)


@pytest.mark.timeout(180)
def test_every_session_of_a_user_goes_to_its_home_and_follows_it_after_sigkill(
    replicated: Callable[..., Pool],  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    pool = replicated("abc")
    gw = gateway_factory(list(pool.nodes.values()))
    first = IMAPClient(gw.imap[0], port=gw.imap[1], ssl=False, timeout=30)
    first.login(*ALICE)
    first.append("INBOX", MESSAGE)  # the node it landed on claimed the lease
    [home] = _placed(gw.log())
    clients = []
    for _ in range(4):
        client = IMAPClient(gw.imap[0], port=gw.imap[1], ssl=False, timeout=30)
        client.login(*ALICE)
        clients.append(client)
    assert _placed(gw.log()) == [home] * 5, gw.log()

    pool.nodes[home].kill()
    for client in [first, *clients]:
        client.select_folder("INBOX")
        assert client.append("INBOX", MESSAGE)  # the session continues, on the next home
    moved = _placed(gw.log())[5:]
    assert len(set(moved)) == 1 and moved[0] != home, gw.log()
    uids = sorted(first.search(["ALL"]))
    assert uids == list(range(1, 7))  # one sequence of UIDs, whichever node gave them
    for client in [first, *clients]:
        client.logout()


def _who(node: NodeProcess) -> WhoReply:
    return asyncio.run(query(node.control, WhoRequest(ALICE[0]), SECRET.encode(), timeout=5))


@pytest.mark.timeout(180)
def test_a_session_left_on_another_node_moves_to_the_home_instead_of_taking_the_lease(
    replicated: Callable[..., Pool],  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    pool = replicated("abc")
    # Answers cached for 10 ms only: each change sees the home the nodes name at that moment.
    gw = gateway_factory(list(pool.nodes.values()), extra="discovery_cache_ttl = 0.01\n")
    session = IMAPClient(gw.imap[0], port=gw.imap[1], ssl=False, timeout=30)
    session.login(*ALICE)
    session.select_folder("INBOX")
    session.append("INBOX", MESSAGE)
    [first] = _placed(gw.log())
    # The home moves behind the gateway's back: a client straight on another node appends.
    other = next(n for n in pool.nodes.values() if n.node_id != first)
    direct = IMAPClient(other.imap[0], port=other.imap[1], ssl=False, timeout=30)
    direct.login(*ALICE)
    direct.append("INBOX", MESSAGE)
    wait_for(lambda: _who(other).home == other.node_id, f"{other.node_id} as the home")
    epoch = _who(other).epoch
    for _ in range(3):  # changes through both: the lease went back and forth at each
        session.add_flags(session.search(["ALL"])[:1], ["\\Flagged"])
        session.append("INBOX", MESSAGE)
        direct.append("INBOX", MESSAGE)
    assert (_who(other).home, _who(other).epoch) == (other.node_id, epoch)
    assert f"to the home {other.node_id} before" in gw.log(), gw.log()
    assert sorted(session.search(["ALL"])) == list(range(1, 9))
    session.logout()
    direct.logout()
