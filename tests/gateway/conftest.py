from __future__ import annotations

from collections.abc import Callable

import pytest

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


