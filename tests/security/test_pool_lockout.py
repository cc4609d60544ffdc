"""Finding 6 (rest): failed logins are counted across the pool, not per gateway or node.

A guesser who spreads attempts over two gateways, each in front of a different node, meets one
lockout: the failures made through the first gateway (on node a) reach node b over the
replication link, and b then refuses that user's logins — even with the right password — until
`lockout_time` after the last failure. Other users are not affected, and the lockout ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.security.support import ALICE, BOB, Raw, served
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(300)

LOCKOUT = 'lockout_failures = 3\nlockout_time = "20s"\n'


def _pool(node_factory: Callable[..., NodeProcess]) -> list[NodeProcess]:
    ports = {i: free_port() for i in "ab"}
    nodes = []
    for i in "ab":
        peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in "ab" if j != i)
        nodes.append(node_factory(i, extra=LOCKOUT, replication=(
            f'[replication]\nlisten = "127.0.0.1:{ports[i]}"\npeers = [{peers}]\n')))
    nodes[0].add_user(*ALICE)
    nodes[0].add_user(*BOB)
    for n in nodes:
        n.start()
    return nodes


def _login(address: tuple[str, int], user: str, password: str) -> bytes:
    with Raw(address, timeout=60) as client:
        return client.command(b"l", f'LOGIN "{user}" "{password}"'.encode())[-1]


def _poll(condition: Callable[[], bool], what: str, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        time.sleep(0.1)  # polling a condition, with a deadline


def test_a_guesser_spreading_over_gateways_meets_one_lockout(
    node_factory: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    a, b = _pool(node_factory)
    fast = 'failed_login_delay = "100ms"'
    first, second = gateway_factory([a], fast), gateway_factory([b], fast)
    _poll(lambda: _login(second.imap, *BOB).startswith(b"l OK"), "bob replicated to b")
    for _ in range(3):
        assert _login(first.imap, ALICE[0], "guess").startswith(b"l NO [AUTHENTICATIONFAILED]")
    _poll(lambda: "login failures for alice@example.test: 3 in the pool" in b.log(),
          "b hears of the failures on a")
    # Through the other gateway and node, even the right password is refused now...
    refused = _login(second.imap, *ALICE)
    assert refused.startswith(b"l NO [AUTHENTICATIONFAILED]"), refused
    assert _login(b.imap, *ALICE).startswith(b"l NO [AUTHENTICATIONFAILED]")  # and directly
    assert "refused, locked after" in b.log()
    served(second.imap, BOB, within=60)  # ...while everyone else is served
    # ...and the lockout ends (lockout_time after the last failure).
    _poll(lambda: _login(second.imap, *ALICE).startswith(b"l OK"), "alice's lockout ends",
          within=150)
