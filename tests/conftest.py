from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.gateway import GatewayProcess, write_gateway_config
from tests.support.nodes import NodeProcess, write_config

# Speed goals live in bench/: on a loaded CI machine an example's wall time says nothing about
# correctness, so no per-example deadline and no "too slow" health check.
settings.register_profile(
    "mailmux", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("mailmux")


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


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Make gateways in front of NODES (started unless start=False); all killed at teardown."""
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
