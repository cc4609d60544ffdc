"""Quarantine after two failures, background re-probe, and broadcast discovery (real nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mailmux.gateway import config as gateway_config
from mailmux.gateway.pool import Pool
from tests.support.nodes import GATEWAY_KEY, NodeProcess


def _config(**raw: object) -> gateway_config.GatewayConfig:
    return gateway_config.from_dict({"gateway_key": GATEWAY_KEY, "discovery_timeout": 0.5, **raw})


async def test_failed_twice_leaves_the_list_until_a_probe_succeeds(
    pool3: list[NodeProcess],
) -> None:
    pool = Pool(_config(pool=[f"{n.control[0]}:{n.control[1]}" for n in pool3]))
    try:
        assert len(await pool.discover("alice@example.test", "least-load")) == 3
        pool.failed("a", "connection refused")
        assert len(await pool.discover("alice@example.test", "least-load")) == 3  # once: stays
        pool.failed("a", "timeout")
        # a still answers discovery, but it failed twice: it is left out (its first re-probe
        # comes a second later).
        ids = {c.node_id for c in await pool.discover("alice@example.test", "least-load")}
        assert ids == {"b", "c"}
        assert pool.health.is_quarantined("a")
        deadline = asyncio.get_running_loop().time() + 20
        while pool.health.is_quarantined("a"):
            assert asyncio.get_running_loop().time() < deadline, "never re-admitted"
            await asyncio.sleep(0.1)  # polling the background prober, with a deadline
        ids = {c.node_id for c in await pool.discover("alice@example.test", "least-load")}
        assert ids == {"a", "b", "c"}
    finally:
        await pool.close()


async def test_broadcast_discovery(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("x")
    node.add_user("dora@example.test", "pw")
    node.start()
    # On loopback the "broadcast" address is the node itself; the code path is the LAN one:
    # one signed question, every valid answer collected until the deadline.
    pool = Pool(_config(broadcast=f"{node.control[0]}:{node.control[1]}"))
    candidates = await pool.discover("dora@example.test", "least-load")
    assert [(c.node_id, c.imap) for c in candidates] == [("x", node.imap)]
