from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.gateway.rawimap import RawImap
from tests.support.nodes import NodeProcess

ALICE = ("alice@example.test", "alice-pw")
BOB = ("bob@example.test", "bob-pw")


@pytest.fixture
def pool3(node_factory: Callable[..., NodeProcess]) -> list[NodeProcess]:
    """Nodes a, b, c running; alice and bob on every node."""
    nodes = [node_factory(n) for n in "abc"]
    for n in nodes:
        n.add_user(*ALICE)
        n.add_user(*BOB)
        n.start()
    return nodes


@pytest.fixture
def raw() -> Iterator[Callable[[tuple[str, int]], RawImap]]:
    """Raw-socket IMAP clients, every one closed at teardown."""
    made: list[RawImap] = []

    def connect(address: tuple[str, int]) -> RawImap:
        made.append(RawImap(address))
        return made[-1]

    try:
        yield connect
    finally:
        for client in made:
            client.close()
