"""The servers the scripted suite runs against: one node, and a gateway before a 3-node pool.

Every scripted test gets its own user (and a second one for tests that use `user2`), all created
before the nodes start: the tests create, rename and delete mailboxes, so sharing a user would
let one test see another's leftovers.
"""

from __future__ import annotations

import asyncio
import imaplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailmux.backend.config import load
from mailmux.backend.store.sqlite import SqliteStore
from tests.support.gateway import GatewayProcess, write_gateway_config
from tests.support.nodes import DOMAIN, NodeProcess, write_config
from tests.support.ports import free_port

PASSWORD = "imaptest-pw"
REPLICATION_DEADLINE = 60.0


def users_for(name: str) -> tuple[str, str]:
    return f"it-{name}@{DOMAIN}", f"it-{name}-2@{DOMAIN}"


def _add_users(node: NodeProcess, users: list[str]) -> None:
    """Straight into the node's store (one process, not one CLI run per user)."""
    config = load(node.config_path)
    config.data_dir.mkdir(parents=True, exist_ok=True)

    async def add() -> None:
        async with SqliteStore.open(config.db_path, config.node_id, config.domains) as store:
            await asyncio.gather(*(store.add_user(u, PASSWORD) for u in users))

    asyncio.run(add())


def _can_login(address: tuple[str, int], user: str) -> bool:
    try:
        with imaplib.IMAP4(*address, timeout=10) as imap:
            imap.login(user, PASSWORD)
            return True
    except (imaplib.IMAP4.error, OSError):
        return False


def _wait_login(address: tuple[str, int], user: str) -> None:
    deadline = time.monotonic() + REPLICATION_DEADLINE
    while not _can_login(address, user):
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} cannot log in at {address} after {REPLICATION_DEADLINE}s")
        time.sleep(0.2)  # polling with a deadline


@contextmanager
def single_node(root: Path, users: list[str]) -> Iterator[tuple[str, int]]:
    node = write_config(root, "solo")
    try:
        _add_users(node, users)
        node.start()
        yield node.imap
    finally:
        node.kill()


@contextmanager
def gateway_pool(root: Path, users: list[str]) -> Iterator[tuple[str, int]]:
    """Nodes a, b, c replicating to each other (users made on a and replicated), one gateway."""
    ids = "abc"
    ports = {i: free_port() for i in ids}
    nodes: list[NodeProcess] = []
    gateway: GatewayProcess | None = None
    try:
        for i in ids:
            peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in ids if j != i)
            nodes.append(write_config(root, i, replication=(
                f'[replication]\nlisten = "127.0.0.1:{ports[i]}"\npeers = [{peers}]\n')))
        _add_users(nodes[0], users)
        for node in nodes:
            node.start()
        for node in nodes:
            _wait_login(node.imap, users[-1])
        gateway = write_gateway_config(root / "gateway.toml", [n.control for n in nodes])
        gateway.start()
        yield gateway.imap
    finally:
        if gateway is not None:
            gateway.kill()
        for node in nodes:
            node.kill()
