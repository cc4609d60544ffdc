"""A whole IMAP session through the gateway with imapclient, and failover mid-session."""

from __future__ import annotations

import imaplib
from collections.abc import Callable

from imapclient import IMAPClient

from tests.gateway.conftest import ALICE, BOB
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

MESSAGE = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: via gateway\r\n\r\nhi\r\n"


def test_full_session_through_the_gateway(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    client = IMAPClient(gw.imap[0], port=gw.imap[1], ssl=False, timeout=30)
    assert b"IDLE" in client.capabilities()
    client.login(*ALICE)
    caps = client.capabilities()
    assert b"MOVE" in caps and b"UIDPLUS" in caps and b"AUTH=PLAIN" not in caps
    names = [name for _, _, name in client.list_folders()]
    assert "INBOX" in names and "Trash" in names
    client.append("INBOX", MESSAGE, flags=[b"\\Flagged"])
    client.append("INBOX", MESSAGE.replace(b"via gateway", b"second"))
    info = client.select_folder("INBOX")
    assert info[b"EXISTS"] == 2
    uids = client.search(["SUBJECT", "second"])
    assert len(uids) == 1
    fetched = client.fetch(uids, ["BODY.PEEK[]", "FLAGS", "ENVELOPE"])
    assert fetched[uids[0]][b"BODY[]"] == MESSAGE.replace(b"via gateway", b"second")
    client.add_flags(uids, [b"\\Seen"])
    assert b"\\Seen" in client.get_flags(uids)[uids[0]]

    # IDLE through the gateway, woken by a delivery from another session.
    client.idle()
    other = IMAPClient(gw.imap[0], port=gw.imap[1], ssl=False, timeout=30)
    other.login(*ALICE)
    other.append("INBOX", MESSAGE.replace(b"via gateway", b"third"))
    responses = client.idle_check(timeout=20)
    client.idle_done()
    assert any(r[1:] == (b"EXISTS",) and r[0] == 3 for r in responses), responses
    other.logout()

    client.move(uids, "Archive")
    assert client.select_folder("Archive")[b"EXISTS"] == 1
    assert client.select_folder("INBOX")[b"EXISTS"] == 2
    client.logout()


def test_session_moves_to_another_node_when_its_backend_dies(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:2])
    client = imaplib.IMAP4(*gw.imap, timeout=30)
    client.login(*BOB)
    first = gw.log().count("login of bob@example.test on ")
    served_by = {"a": pool3[0], "b": pool3[1]}[
        gw.log().rsplit("login of bob@example.test on ", 1)[1][0]
    ]
    served_by.kill()
    status, data = client.list()
    assert status == "OK" and any(b"INBOX" in line for line in data)
    assert gw.log().count("login of bob@example.test on ") == first + 1
    assert "failing over" in gw.log()
    client.logout()
