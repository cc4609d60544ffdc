"""Finding 5 (rest): a gateway's links to a node do not compete with strangers' connections.

Strangers may fill every one of a node's `max_unauthenticated` slots; a gateway's link proves
with its gateway key (XGATEWAY, sent before the greeting) that it is a gateway's and is counted
in a budget of its own, so users behind the gateway still log in. Strangers, and anyone with a
made-up key, are still sent away.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from mailmux.protocol.control.keys import GatewayKey
from mailmux.protocol.imap import gatewaylink
from tests.security.support import ALICE, Raw, served
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(240)

SLOTS = 5


def test_strangers_filling_the_slots_do_not_lock_out_gateway_users(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = victim(f'max_unauthenticated = {SLOTS}\nlogin_timeout = "120s"')
    gateway = gateway_factory([node])
    held = [Raw(node.imap) for _ in range(SLOTS)]
    try:
        assert all(h.greeting.startswith(b"* OK") for h in held)
        with Raw(node.imap) as stranger:  # the slots are full: strangers are sent away
            assert stranger.greeting.startswith(b"* BYE [UNAVAILABLE]"), stranger.greeting
        forged = GatewayKey("test-gateway", b"guessed-secret-0123456789")
        with Raw(node.imap, greet=False) as impostor:  # a made-up key is no way in either
            impostor.send(gatewaylink.command(b"g", forged, time.time(), os.urandom(16)))
            assert impostor.line().startswith(b"* BYE [UNAVAILABLE]")
        for _ in range(3):  # fresh links each time: every login gets past the strangers
            served(gateway.imap, ALICE, within=60)
        assert all(h.command(b"n", b"NOOP")[-1].startswith(b"n OK") for h in held)
    finally:
        for h in held:
            h.close()
