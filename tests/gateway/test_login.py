"""Selection and login failover through a real gateway process in front of real nodes."""

from __future__ import annotations

import imaplib
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gateway.conftest import ALICE, BOB
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess


def _login_log(gw: GatewayProcess) -> list[str]:
    return re.findall(r"login of \S+ on (\w+) \(load", gw.log())


def _imap_login(address: tuple[str, int], user: str, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(*address, timeout=30)
    client.login(user, password)
    return client


@pytest.fixture
def busy_a(pool3: list[NodeProcess]) -> Iterator[list[imaplib.IMAP4]]:
    """Six idle sessions held open directly on node a (and none on b, c): a's load is higher."""
    held = [_imap_login(pool3[0].imap, *ALICE) for _ in range(6)]
    yield held
    for client in held:
        client.logout()


def test_logins_land_on_the_least_loaded_node(
    pool3: list[NodeProcess], busy_a: list[imaplib.IMAP4],
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3)
    for _ in range(20):
        client = _imap_login(gw.imap, *BOB)
        client.logout()
    landed = Counter(_login_log(gw))
    assert sum(landed.values()) == 20
    assert landed["a"] == 0, landed


def test_p2c_spreads_logins_from_three_gateways(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateways = [gateway_factory(pool3, extra='selection = "p2c"') for _ in range(3)]
    held: list[imaplib.IMAP4] = []

    def login(i: int) -> imaplib.IMAP4:
        return _imap_login(gateways[i % 3].imap, *(ALICE if i % 2 else BOB))

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            held = list(pool.map(login, range(300)))
        per_node = Counter(n for gw in gateways for n in _login_log(gw))
        assert sum(per_node.values()) == 300
        # Herding (every gateway choosing one node from stale answers) puts nearly all 300 on
        # one or two nodes. The bound is loose because a node's score includes its event-loop
        # lag, which a loaded machine raises for one node more than another: that node then
        # rightly gets fewer sessions.
        assert min(per_node[n] for n in "abc") >= 30, per_node
        assert max(per_node.values()) / min(per_node.values()) <= 3, per_node
    finally:
        for client in held:
            client.logout()


def test_login_fails_over_when_the_chosen_node_is_dead(
    pool3: list[NodeProcess], busy_a: list[imaplib.IMAP4],
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3)
    _, b, c = pool3
    # b and c are idle, so one of them is the would-be choice; stop both of them in turn.
    b.signal(signal.SIGSTOP)  # alive for the kernel, silent for the gateway: a timeout
    try:
        c.kill()
        client = _imap_login(gw.imap, *BOB)
        assert client.select("INBOX")[0] == "OK"
        client.logout()
    finally:
        b.signal(signal.SIGCONT)
    assert _login_log(gw) == ["a"]


def test_no_node_left_answers_unavailable(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3)
    for n in pool3:
        n.kill()
    client = imaplib.IMAP4(*gw.imap, timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        client.login(*ALICE)
    client.shutdown()
    assert "no live pool member serves alice@example.test" in gw.log()


def test_wrong_password_is_final_and_asks_one_backend(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3)
    client = imaplib.IMAP4(*gw.imap, timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        client.login(ALICE[0], "wrong")
    client.shutdown()
    tried = re.findall(r"login: trying alice@example.test on (\w+)", gw.log())
    assert len(tried) == 1, tried
