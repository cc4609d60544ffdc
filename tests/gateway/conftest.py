from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, write_gateway_config
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
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    made: list[GatewayProcess] = []

    def make(nodes: list[NodeProcess], extra: str = "", start: bool = True) -> GatewayProcess:
        gw = write_gateway_config(
            tmp_path / f"gateway{len(made)}.toml", [n.control for n in nodes], extra
        )
        made.append(gw)
        if start:
            gw.start()
        return gw

    try:
        yield make
    finally:
        for gw in made:
            gw.kill()
