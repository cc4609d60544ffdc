"""Attack tests: each performs one finding of issue 9 against real node/gateway processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.security.support import ALICE, BOB
from tests.support.gateway import GatewayProcess, write_gateway_config
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


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    made: list[GatewayProcess] = []

    def make(nodes: list[NodeProcess], extra: str = "") -> GatewayProcess:
        gw = write_gateway_config(
            tmp_path / f"gateway{len(made)}.toml", [n.control for n in nodes], extra)
        made.append(gw)
        gw.start()
        return gw

    try:
        yield make
    finally:
        for gw in made:
            gw.kill()
