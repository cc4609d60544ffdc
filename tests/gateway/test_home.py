"""The gateway sends every session of a user to the user's home (issue 7): the node the
discovery answers name as the lease holder. With no live home it picks by load, and that node
claims; when the home dies the sessions move on and the next home takes over."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from imapclient import IMAPClient

from tests.gateway.conftest import ALICE
from tests.gateway.replicated import Pool, replicated  # noqa: F401  (fixture)
from tests.support.gateway import GatewayProcess

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
