"""Replicated node pools for the gateway's failover tests (kept here so the gateway tests do not
depend on the replication tests' module layout)."""

from __future__ import annotations

import imaplib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.nodes import NodeProcess
from tests.support.ports import free_port

ALICE = ("alice@example.test", "alice-pw")
DEADLINE = 30.0


@dataclass
class Pool:
    nodes: dict[str, NodeProcess]


def wait_for(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling with a deadline


def can_login(node: NodeProcess) -> bool:
    try:
        with imaplib.IMAP4(*node.imap, timeout=5) as imap:
            imap.login(*ALICE)
            return True
    except (imaplib.IMAP4.error, OSError):
        return False


def inbox(node: NodeProcess) -> dict[int, tuple[bytes, bytes]]:
    """uid → (flags, body) of alice's INBOX on one node, read directly."""
    with imaplib.IMAP4(*node.imap, timeout=30) as imap:
        imap.login(*ALICE)
        imap.select("INBOX", readonly=True)
        out: dict[int, tuple[bytes, bytes]] = {}
        _, fetched = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        for item in fetched:
            if isinstance(item, tuple):
                head = item[0]
                uid = int(head.split(b"UID ")[1].split()[0])
                flags = head.split(b"FLAGS (")[1].split(b")")[0]
                out[uid] = (b" ".join(sorted(flags.split())), item[1])
        return out


@pytest.fixture
def replicated(node_factory: Callable[..., NodeProcess]) -> Iterator[Callable[..., Pool]]:
    """make(ids, copy_timeout): replicated nodes (W=2 for normal mail), alice on all of them.
    Stopped nodes are continued at teardown so the node fixture can kill them."""
    made: list[Pool] = []

    def make(ids: str = "abc", copy_timeout: str = "2s") -> Pool:
        ports = {i: free_port() for i in ids}
        nodes = {}
        for i in ids:
            peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in ids if j != i)
            nodes[i] = node_factory(i, replication=(
                "[replication]\n"
                f'listen = "127.0.0.1:{ports[i]}"\n'
                f"peers = [{peers}]\n"
                f'copy_timeout = "{copy_timeout}"\n'
                "[replication.copies]\n"
                'high = "all"\nnormal = 2\nbulk = 1\n'
            ))
        nodes[ids[0]].add_user(*ALICE)
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            wait_for(lambda n=node: can_login(n), f"alice on {node.node_id}")
        made.append(Pool(nodes))
        return made[-1]

    try:
        yield make
    finally:
        for pool in made:
            for node in pool.nodes.values():
                if node.proc is not None and node.proc.poll() is None:
                    node.signal(signal.SIGCONT)
