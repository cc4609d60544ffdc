"""Attack tests: each performs one finding of issue 9 against real node/gateway processes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.security.support import ALICE, BOB
from tests.support.nodes import NodeProcess


@pytest.fixture
def victim(node_factory: Callable[..., NodeProcess]) -> Callable[..., NodeProcess]:
    """Start a node with alice and bob and the given extra config."""

    def make(extra: str = "", node_id: str = "v") -> NodeProcess:
        n = node_factory(node_id, extra=extra)
        n.add_user(*ALICE)
        n.add_user(*BOB)
        n.start()
        return n

    return make
