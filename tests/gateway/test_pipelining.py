"""Pipelined commands by number through the gateway (RFC 3501 5.5): while the client has a
command by sequence number waiting behind the one in flight, another session's expunge is held
back, the waiting command means the messages the client means, and the expunge is told at the
next point that may carry it. Real node, real gateway, a raw-socket client."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Callable

import pytest

from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import RawImap
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    made = node_factory("a")
    made.add_user(*ALICE)
    made.start()
    return made


def _mailbox_of_five(node: NodeProcess) -> list[int]:
    with imaplib.IMAP4(*node.imap, timeout=30) as direct:
        direct.login(*ALICE)
        for i in range(1, 6):
            body = f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()
            assert direct.append("INBOX", "", None, body)[0] == "OK"
        direct.select("INBOX")
        _, data = direct.uid("SEARCH", "ALL")
    return [int(u) for u in data[0].split()]


def _expunge_elsewhere(gw: GatewayProcess, uid: int) -> None:
    other = imaplib.IMAP4(*gw.imap, timeout=30)
    try:
        other.login(*ALICE)
        other.select("INBOX")
        assert other.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert other.expunge()[0] == "OK"
    finally:
        other.logout()


def _responses(client: RawImap, *tags: str) -> list[bytes]:
    out: list[bytes] = []
    for tag in tags:
        out += client.until(tag)
    return out


def _selected(node: NodeProcess, gateway_factory: Callable[..., GatewayProcess],
              raw: Callable[[tuple[str, int]], RawImap], expunged: int) -> tuple[RawImap,
                                                                                list[int]]:
    """A client with INBOX (five messages) selected through a gateway, then the message at
    index `expunged` expunged by another session; the client has not been told yet."""
    uids = _mailbox_of_five(node)
    gw = gateway_factory([node])
    client = raw(gw.imap)
    client.login(*ALICE)
    assert b"* 5 EXISTS\r\n" in client.command("s", "SELECT INBOX")
    _expunge_elsewhere(gw, uids[expunged])
    return client, uids


def test_an_expunge_waits_for_a_pipelined_fetch_by_number(
    node: NodeProcess, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    client, uids = _selected(node, gateway_factory, raw, expunged=1)
    # One segment: the FETCH of message 3 is already waiting when NOOP is relayed.
    client.send(b"n NOOP\r\nf FETCH 3 (UID)\r\n")
    during = _responses(client, "n", "f")
    assert not any(b"EXPUNGE" in r for r in during), during
    # Message 3 is still the third message the client knows, not the node's third.
    fetched = [r for r in during if r.startswith(b"* ") and b" FETCH " in r]
    assert fetched == [b"* 3 FETCH (UID %d)\r\n" % uids[2]], during
    later = client.command("m", "NOOP")
    assert b"* 2 EXPUNGE\r\n" in later, later
    assert client.command("c", "FETCH 2 (UID)")[0] == b"* 2 FETCH (UID %d)\r\n" % uids[2]


def test_a_pipelined_search_by_number_means_the_clients_numbers(
    node: NodeProcess, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    client, _ = _selected(node, gateway_factory, raw, expunged=0)
    client.send(b"n NOOP\r\nq SEARCH (3:4) NOT DELETED\r\nr SEARCH 5\r\n")
    during = _responses(client, "n", "q", "r")
    assert not any(b"EXPUNGE" in r for r in during), during
    found = [r for r in during if r.startswith(b"* SEARCH")]
    # the client's 3 and 4 (and 5) are UIDs 3, 4 (and 5) of the five: answered in its numbers
    assert [re.findall(rb"\d+", r) for r in found] == [[b"3", b"4"], [b"5"]], during
    assert b"* 1 EXPUNGE\r\n" in client.command("m", "NOOP")
