from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.nodes import NodeProcess, write_config


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Make (not start) backend node processes; every one is SIGKILLed at teardown."""
    made: list[NodeProcess] = []

    def make(node_id: str = "a", extra: str = "", replication: str = "") -> NodeProcess:
        node = write_config(tmp_path, node_id, extra, replication)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.kill()


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    """One running node with users alice and bob (passwords 'alice-pw', 'bob-pw')."""
    n = node_factory("a")
    n.add_user("alice@example.test", "alice-pw")
    n.add_user("bob@example.test", "bob-pw")
    n.start()
    return n
