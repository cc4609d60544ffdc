"""Pools of real node processes for the replication tests (the `make_pool` fixture)."""

from __future__ import annotations

import imaplib
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.nodes import NodeProcess
from tests.support.ports import free_port
from tests.support.tcp_proxy import TcpProxy

ALICE = ("alice@example.test", "alice-pw")
DEADLINE = 20.0


@dataclass
class Pool:
    nodes: dict[str, NodeProcess]
    proxies: dict[tuple[str, str], TcpProxy]

    def partition(self) -> None:
        for proxy in self.proxies.values():
            proxy.cut()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def split(self, side: set[str]) -> None:
        """Cut every link between `side` and the other nodes (both directions)."""
        for (source, target), proxy in self.proxies.items():
            if (source in side) != (target in side):
                proxy.cut()


@pytest.fixture
def make_pool(node_factory: Callable[..., NodeProcess]) -> Iterator[Callable[..., Pool]]:
    proxies: list[TcpProxy] = []

    def make(ids: str = "abc", *, proxied: bool = False, normal: int = 2,
             copy_timeout: str = "2s", extra: str = "", replication_extra: str = "") -> Pool:
        ports = {i: free_port() for i in ids}
        routes: dict[tuple[str, str], TcpProxy] = {}
        nodes = {}
        for i in ids:
            peers = []
            for j in ids:
                if j == i:
                    continue
                port = ports[j]
                if proxied:
                    routes[(i, j)] = TcpProxy(("127.0.0.1", ports[j]))
                    proxies.append(routes[(i, j)])
                    port = routes[(i, j)].port
                peers.append(f'"{j}=127.0.0.1:{port}"')
            nodes[i] = node_factory(i, replication=(
                "[replication]\n"
                f'listen = "127.0.0.1:{ports[i]}"\n'
                f"peers = [{', '.join(peers)}]\n"
                f'copy_timeout = "{copy_timeout}"\n'
                f"{replication_extra}"
                "[replication.copies]\n"
                f'high = "all"\nnormal = {normal}\nbulk = 1\n'
            ), extra=extra)
        first = nodes[ids[0]]
        first.add_user(*ALICE)
        for n in nodes.values():
            n.start()
        pool = Pool(nodes, routes)
        for n in nodes.values():
            wait_for(lambda n=n: _can_login(n), f"alice on {n.node_id}")
        return pool

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling with a deadline


def _can_login(node: NodeProcess) -> bool:
    try:
        with imaplib.IMAP4(*node.imap, timeout=5) as imap:
            imap.login(*ALICE)
            return True
    except imaplib.IMAP4.error:
        return False


def inbox(node: NodeProcess) -> dict[int, tuple[bytes, bytes]]:
    """uid → (flags, body) of alice's INBOX, plus UIDVALIDITY/UIDNEXT under key 0."""
    with imaplib.IMAP4(*node.imap, timeout=10) as imap:
        imap.login(*ALICE)
        imap.select("INBOX", readonly=True)
        _, data = imap.status("INBOX", "(UIDVALIDITY UIDNEXT)")
        out: dict[int, tuple[bytes, bytes]] = {0: (data[0], b"")}
        _, fetched = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        for item in fetched:
            if isinstance(item, tuple):
                head = item[0]
                uid = int(head.split(b"UID ")[1].split()[0])
                flags = head.split(b"FLAGS (")[1].split(b")")[0]
                # \Recent is per session (the first to see a message), not replicated state.
                kept = [f for f in flags.split() if f != b"\\Recent"]
                out[uid] = (b" ".join(sorted(kept)), item[1])
        return out


def deliver(node: NodeProcess, subject: str, extra: str = "") -> tuple[int, bytes]:
    with smtplib.SMTP(*node.smtp, timeout=30) as smtp:
        try:
            smtp.sendmail("x@example.org", [ALICE[0]],
                          f"{extra}Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode())
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
    return 250, b""
