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


def test_selected_session_fails_over_to_a_replica_without_the_client_noticing(
    node_factory: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    from tests.replication.test_pool import wait_for
    from tests.support.ports import free_port

    ports = {"a": free_port(), "b": free_port()}
    nodes = []
    for me, other in (("a", "b"), ("b", "a")):
        nodes.append(node_factory(me, replication=(
            f'[replication]\nlisten = "127.0.0.1:{ports[me]}"\n'
            f'peers = ["{other}=127.0.0.1:{ports[other]}"]\n'
            # With one of two nodes left, changes (the STORE below) need degraded mode:
            # acknowledged otherwise means on W=2 nodes (issue 7).
            'copy_timeout = "1s"\ndegrade = true\n')))
    nodes[0].add_user(*ALICE)
    for n in nodes:
        n.start()
    gw = gateway_factory(nodes)
    client = IMAPClient(gw.imap[0], port=gw.imap[1], ssl=False, timeout=30)
    client.login(*ALICE)
    client.append("INBOX", MESSAGE)  # W=2: on both nodes once OK
    client.append("INBOX", MESSAGE.replace(b"via gateway", b"second"))
    assert client.select_folder("INBOX")[b"EXISTS"] == 2
    serving = gw.log().rsplit("login of alice@example.test on ", 1)[1][0]
    {"a": nodes[0], "b": nodes[1]}[serving].kill()
    fetched = client.fetch(client.search(["ALL"]), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    subjects = sorted(v[b"BODY[HEADER.FIELDS (SUBJECT)]"] for v in fetched.values())
    assert subjects == [b"Subject: second\r\n\r\n", b"Subject: via gateway\r\n\r\n"]
    wait_for(lambda: "now on " in gw.log(), "the failover log line")
    client.add_flags(list(fetched), [b"\\Flagged"])
    client.logout()
