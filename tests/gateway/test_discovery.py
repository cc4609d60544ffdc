"""Discovery against real node processes: who serves USER, forged answers, DNS SRV."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from mailmux.gateway import config as gateway_config
from mailmux.gateway.pool import Pool
from mailmux.protocol.control.codec import encode
from mailmux.protocol.control.messages import WhoReply
from tests.support.dns_server import DnsServer
from tests.support.gateway import GatewayProcess
from tests.support.nodes import GATEWAY_KEY, NodeProcess


def _config(**raw: object) -> gateway_config.GatewayConfig:
    return gateway_config.from_dict({"gateway_key": GATEWAY_KEY, "discovery_timeout": 1.0, **raw})


def _addr(a: tuple[str, int]) -> str:
    return f"{a[0]}:{a[1]}"


@pytest.fixture
def two_of_three(node_factory: Callable[..., NodeProcess]) -> list[NodeProcess]:
    nodes = [node_factory(n) for n in "abc"]
    for n in nodes[:2]:
        n.add_user("carol@example.test", "carol-pw")
    for n in nodes:
        n.start()
    return nodes


async def test_only_nodes_holding_the_user_are_candidates(two_of_three: list[NodeProcess]) -> None:
    pool = Pool(_config(pool=[_addr(n.control) for n in two_of_three]))
    answers = await pool.ask("carol@example.test")
    assert sorted(a.reply.node_id for a in answers) == ["a", "b", "c"]
    candidates = await pool.discover("carol@example.test", "least-load")
    assert sorted(c.node_id for c in candidates) == ["a", "b"]
    by_id = {c.node_id: c for c in candidates}
    assert by_id["a"].imap == two_of_three[0].imap
    assert by_id["b"].smtp == two_of_three[1].smtp
    assert await pool.discover("nobody@example.test", "least-load") == []


async def test_discovery_answers_are_reused_briefly_and_dropped_on_failure(
    two_of_three: list[NodeProcess], monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = Pool(_config(pool=[_addr(n.control) for n in two_of_three],
                        discovery_cache_ttl=60))
    asked: list[str] = []
    real_ask = pool.ask

    async def counting(user: str, *, stop_at_first_yes: bool = False) -> list[object]:
        asked.append(user)
        return await real_ask(user, stop_at_first_yes=stop_at_first_yes)  # type: ignore[return-value]

    monkeypatch.setattr(pool, "ask", counting)
    first = await pool.discover("carol@example.test", "least-load")
    again = await pool.discover("carol@example.test", "least-load")  # a second connection
    assert [c.node_id for c in again] == [c.node_id for c in first] and len(asked) == 1
    await pool.discover("nobody@example.test", "least-load")
    await pool.discover("nobody@example.test", "least-load")  # "nobody" answers are not kept
    assert len(asked) == 3
    pool.failed("a", "connection refused")
    await pool.discover("carol@example.test", "least-load")
    assert len(asked) == 4


class _Forger(asyncio.DatagramProtocol):
    """A rogue host claiming every user, signing with the wrong secret."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.asked = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is not registered as a DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.asked += 1
        request = json.loads(data[data.index(b"{"):])
        user = request["body"]["user"]
        reply = WhoReply("rogue", user, True, "127.0.0.1:1", "127.0.0.1:2", 0.0)
        forged = encode(reply, b"not-the-pool-secret", now=time.time(), nonce=os.urandom(16),
                        request_id=bytes.fromhex(request["nonce"]))
        assert self.transport is not None
        self.transport.sendto(forged, addr)


async def test_forged_answers_are_ignored_and_logged(
    two_of_three: list[NodeProcess], caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    transport, forger = await loop.create_datagram_endpoint(
        _Forger, local_addr=("127.0.0.1", 0)
    )
    try:
        rogue = transport.get_extra_info("sockname")
        pool = Pool(_config(pool=[_addr(rogue), *(_addr(n.control) for n in two_of_three)]))
        with caplog.at_level(logging.WARNING):
            candidates = await pool.discover("carol@example.test", "least-load")
    finally:
        transport.close()
    assert forger.asked == 1
    assert sorted(c.node_id for c in candidates) == ["a", "b"]
    assert any("ignoring reply" in r.getMessage() for r in caplog.records)


async def test_dns_srv_finds_the_pool(two_of_three: list[NodeProcess]) -> None:
    a, b, c = two_of_three
    records = {
        ("_mailmux._udp.example.test", "SRV"): [
            f"10 5 {n.control[1]} node-{n.node_id}.example.test." for n in (a, b, c)
        ],
        **{(f"node-{n.node_id}.example.test", "A"): ["127.0.0.1"] for n in (a, b, c)},
    }
    with DnsServer(records) as dns_server:
        pool = Pool(_config(srv_domain="example.test", dns_server=_addr(dns_server.address)))
        members = await pool.members()
        candidates = await pool.discover("carol@example.test", "least-load")
    assert sorted(members) == sorted(n.control for n in (a, b, c))
    assert sorted(c.node_id for c in candidates) == ["a", "b"]
    assert "_mailmux._udp.example.test. SRV" in dns_server.queries


def test_discover_and_status_commands(
    two_of_three: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    gw = gateway_factory(two_of_three, start=False)
    two_of_three[2].kill()
    found = gw.cli("discover", "carol@example.test", "--json")
    assert found.returncode == 0, found.stderr
    answers = json.loads(found.stdout)["answers"]
    assert sorted((a["id"], a["serves"]) for a in answers) == [("a", True), ("b", True)]
    status = gw.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["control"]: r for r in json.loads(status.stdout)["members"]}
    assert rows[_addr(two_of_three[0].control)]["alive"] is True
    assert rows[_addr(two_of_three[0].control)]["users"] == 1
    dead = rows[_addr(two_of_three[2].control)]
    assert dead["alive"] is False and dead["error"]
    table = gw.cli("status")
    assert "NO" in table.stdout and "yes" in table.stdout
