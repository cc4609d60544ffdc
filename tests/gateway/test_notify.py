"""NOTIFY (RFC 5465) through the gateway: the backend's events between commands reach the
client, and commands after them are answered as usual."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Callable

import imapclient

from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import RawImap
from tests.gateway.replicated import Pool, replicated  # noqa: F401  (fixture)
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

MESSAGE = b"Subject: hello\r\n\r\nhi\r\n"


def serving(gw: GatewayProcess, user: str, nodes: dict[str, NodeProcess]) -> NodeProcess:
    node_id = re.findall(rf"login of {re.escape(user)} on (\w+)", gw.log())[-1]
    return nodes[node_id]


def test_notify_events_are_relayed_between_commands(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = pool3[0]
    gw = gateway_factory([node])
    client = RawImap(gw.imap, timeout=30)
    other = imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=30)
    try:
        client.login(*ALICE)
        assert b"NOTIFY" in client.command("c", "CAPABILITY")[0]
        out = client.command("n", b"NOTIFY SET STATUS (selected (MessageNew MessageExpunge)) "
                                  b"(personal (MessageNew MessageExpunge MailboxName))")
        assert out[-1].startswith(b"n OK") and any(r.startswith(b"* STATUS") for r in out)
        assert client.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        other.login(*ALICE)
        other.append("Archive", MESSAGE)
        # no command in flight: the socket timeout is the deadline
        assert re.match(rb'\* STATUS "Archive" \(MESSAGES 1 UIDNEXT \d+ UIDVALIDITY \d+\)\r\n',
                        client.response())
        big = b"Subject: big\r\n\r\n" + b"y" * 600_000 + b"\r\n"
        other.append("INBOX", big)
        assert client.response() == b"* 1 EXISTS\r\n"
        assert client.response() == b"* 1 RECENT\r\n"
        # a command after the events: its answer is read whole (a large one too)
        out = client.command("f", "FETCH 1 (UID BODY.PEEK[])")
        assert out[-1].startswith(b"f OK") and big in out[0]
        other.create_folder("Fresh")
        assert client.response() == b'* LIST () "/" "Fresh"\r\n'
        assert client.command("z", "NOTIFY NONE")[-1].startswith(b"z OK")
        other.append("Archive", MESSAGE)
        assert [r for r in client.command("y", "NOOP") if b"STATUS" in r] == []
    finally:
        client.close()
        other.shutdown()


def test_notify_is_restored_after_failover(
    replicated: Callable[..., Pool],  # noqa: F811
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    nodes = replicated("abc").nodes
    gw = gateway_factory(list(nodes.values()))
    client = RawImap(gw.imap, timeout=60)
    try:
        client.login(*ALICE)
        out = client.command("n", b"NOTIFY SET (personal (MessageNew MessageExpunge))")
        assert out[-1].startswith(b"n OK")
        first = serving(gw, ALICE[0], nodes)
        first.kill()
        assert client.command("p", "NOOP")[-1].startswith(b"p OK")  # fails over
        now = serving(gw, ALICE[0], nodes)
        assert now is not first
        with imaplib.IMAP4(*now.imap, timeout=60) as direct:
            direct.login(*ALICE)
            assert direct.append("Archive", "", None, MESSAGE)[0] == "OK"
        assert re.match(rb'\* STATUS "Archive" \(MESSAGES \d+ UIDNEXT \d+ UIDVALIDITY \d+\)',
                        client.response())
    finally:
        client.close()
