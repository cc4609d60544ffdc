from __future__ import annotations

import contextlib
import imaplib
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.dns_server import DnsServer
from tests.support.nodes import NodeProcess
from tests.support.ports import free_port
from tests.support.smtp_sink import SmtpSink

ALICE = ("alice@example.test", "alice-pw")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer({("remote.test", "MX"): ["10 mx.remote.test."],
                    ("mx.remote.test", "A"): ["127.0.0.1"]}) as server:
        yield server


def outbound_table(sink: SmtpSink, dns: DnsServer, extra: str = "") -> str:
    return ("[outbound]\n"
            f"mx_port = {sink.port}\n"
            f'dns_servers = ["127.0.0.1:{dns.address[1]}"]\n'
            'timeout = "20s"\n'
            f"{extra}\n")


def wait_until_login(node: NodeProcess, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(imaplib.IMAP4.error), imaplib.IMAP4(*node.imap, timeout=5) as imap:
            imap.login(*ALICE)
            return
        time.sleep(0.1)  # polling with a deadline
    raise AssertionError(f"alice cannot log in on {node.node_id}")


@pytest.fixture
def make_nodes(node_factory: Callable[..., NodeProcess]) -> Callable[..., list[NodeProcess]]:
    """Start nodes `ids` replicating to each other, alice on all, with the given [outbound]."""

    def make(ids: str, outbound: str, *, start: str | None = None, normal: int = 2,
             copy_timeout: str = "2s") -> list[NodeProcess]:
        ports = {i: free_port() for i in ids}
        nodes = []
        for i in ids:
            peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in ids if j != i)
            replication = (
                "[replication]\n"
                f'listen = "127.0.0.1:{ports[i]}"\n'
                f"peers = [{peers}]\n"
                f'copy_timeout = "{copy_timeout}"\n'
                "[replication.copies]\n"
                f"normal = {normal}\n"
            ) if len(ids) > 1 else ""
            nodes.append(node_factory(i, extra=outbound, replication=replication))
        # Added once: every replica then holds the same INBOX (same UIDVALIDITY).
        nodes[0].add_user(*ALICE)
        running = [n for n in nodes if start is None or n.node_id in start]
        for node in running:
            node.start()
        for node in running:
            wait_until_login(node)
        return nodes

    return make
