"""Postfix as the smarthost: a real MTA on loopback, reached with STARTTLS (certificate checked
against the test's CA), delivering to a Maildir the test reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.outbound.conftest import ALICE
from tests.outbound.test_pool import REMOTE, message, queue_cli, submit, wait_for
from tests.support.certs import self_signed
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess
from tests.support.postfix import Postfix, available

pytestmark = pytest.mark.skipif(
    not available(), reason="needs the Debian package postfix (installed by .ci/run), as root")


@pytest.mark.timeout(180)
def test_thunderbird_submission_relayed_by_postfix_arrives_once(
    tmp_path: Path, make_nodes: Callable[..., list[NodeProcess]],
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    cert, key = self_signed(tmp_path)
    with Postfix(cert, key) as postfix:
        outbound = ("[outbound]\n"
                    f'relay = "127.0.0.1:{postfix.port}"\n'
                    'relay_tls = "starttls"\n'
                    f'relay_ca_file = "{cert}"\n')
        nodes = make_nodes("ab", outbound)
        gw = gateway_factory(nodes)
        submit(gw, [REMOTE], message("via-postfix"))
        wait_for(lambda: len(postfix.delivered()) == 1, f"postfix delivery\n{postfix.log()}")
        [mail] = postfix.delivered()
        assert b"Subject: via-postfix" in mail and f"<{ALICE[0]}>".encode() in mail
        # Postfix's own Received line says the hop was encrypted (ESMTPS).
        assert b"with ESMTPS id" in mail
        for node in nodes:
            wait_for(lambda node=node: queue_cli(node, "list") == [], f"queue on {node.node_id}")
        assert len(postfix.delivered()) == 1
