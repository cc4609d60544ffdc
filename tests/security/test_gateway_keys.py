"""Finding 8: gateways hold gateway keys, never the pool secret.

A gateway key (issued with `mailmux-backend gateway-key add`, replicated to every node) may ask
WHO/LOAD/HEALTH, prove an IMAP link is a gateway's and hand mail to a node's intake; offered on
the replication port it buys nothing, and once revoked (on any node) every node refuses it
within seconds.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest

from mailmux.backend.control.client import query
from mailmux.outbound.gateway_auth import MECHANISM, answer
from mailmux.protocol.control.codec import ControlError
from mailmux.protocol.control.keys import GatewayKey, parse_key
from mailmux.protocol.control.messages import LoadRequest, WhoRequest
from mailmux.protocol.imap import gatewaylink
from mailmux.protocol.peer.session import hello, plain
from tests.security.support import ALICE, BOB, Raw, served
from tests.support.gateway import write_gateway_config
from tests.support.nodes import GATEWAY_KEY, SECRET, NodeProcess, split_address
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(300)

REVOKED_WITHIN = 30.0  # generous: "within seconds" on an idle machine, polled


def _pool(node_factory: Callable[..., NodeProcess]) -> list[NodeProcess]:
    ports = {i: free_port() for i in "ab"}
    nodes = []
    for i in "ab":
        peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in "ab" if j != i)
        nodes.append(node_factory(i, replication=(
            f'[replication]\nlisten = "127.0.0.1:{ports[i]}"\npeers = [{peers}]\n')))
    nodes[0].add_user(*ALICE)
    nodes[0].add_user(*BOB)
    for n in nodes:
        n.start()
    return nodes


def _asks(address: tuple[str, int], key: GatewayKey | bytes) -> bool:
    """Does the node answer a signed WHO (and so know the credential)?"""
    async def ask() -> bool:
        try:
            reply = await query(address, WhoRequest(ALICE[0]), key, timeout=1.0,
                                transport="tcp")
        except (TimeoutError, OSError, ControlError):
            return False
        return reply.serves
    return asyncio.run(ask())


def _poll(condition: Callable[[], bool], what: str, within: float = REVOKED_WITHIN) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within}s: {what}"
        time.sleep(0.1)  # polling a condition, with a deadline
    return time.monotonic() - started


def _handoff_auth(address: tuple[str, int], key: GatewayKey) -> int:
    async def auth() -> int:
        client = aiosmtplib.SMTP(hostname=address[0], port=address[1], timeout=30,
                                 start_tls=False, use_tls=False)
        await client.connect()
        try:
            await client.ehlo()
            challenge = await client.execute_command(b"AUTH", MECHANISM.encode())
            reply = await client.execute_command(
                base64.b64encode(answer(key, base64.b64decode(challenge.message))))
            return reply.code
        finally:
            client.close()
    return asyncio.run(auth())


def _link(address: tuple[str, int], key: GatewayKey) -> bytes:
    """The node's answer to an XGATEWAY proof made with `key`."""
    with Raw(address) as link:
        link.send(gatewaylink.command(b"g", key, time.time(), os.urandom(16)))
        return link.until_tag(b"g")[-1]


def _key_cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return node.cli("gateway-key", *args)


def test_a_gateway_key_buys_nothing_on_the_peer_port(
    node_factory: Callable[..., NodeProcess],
) -> None:
    nodes = _pool(node_factory)
    replication = split_address(str(nodes[0].ready["replication"]))
    key = parse_key(GATEWAY_KEY)
    assert _asks(nodes[0].control, key)  # the key is good where gateways may use it
    for secret in (key.secret, key.line().encode()):  # a leaked key, tried as a peer would
        with socket.create_connection(replication, timeout=30) as rogue:
            rogue.sendall(plain(hello(secret, "b", os.urandom(16), time.time())))
            assert rogue.recv(65536) == b""  # hung up on: no welcome, no session key
    # The same handshake with the pool secret is welcomed: the refusal above is the key's.
    with socket.create_connection(replication, timeout=30) as peer:
        peer.sendall(plain(hello(SECRET.encode(), "b", os.urandom(16), time.time())))
        welcome = peer.recv(65536)
        assert b'"welcome"' in welcome or b"mac" in welcome, welcome
    assert "refused connection" in nodes[0].log()


def test_gateways_run_without_the_pool_secret(
    node_factory: Callable[..., NodeProcess], tmp_path: Path,
) -> None:
    nodes = _pool(node_factory)
    config = write_gateway_config(tmp_path / "gw.toml", [n.control for n in nodes])
    text = config.config_path.read_text()
    assert SECRET not in text and SECRET not in (tmp_path / "gw.gateway-key").read_text()
    config.config_path.write_text(f'pool_secret = "{SECRET}"\n' + text)
    refused = subprocess.run(
        [sys.executable, "-m", "mailmux.gateway", "run", "--config", str(config.config_path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "pool_secret" in refused.stderr, refused.stderr


def test_a_revoked_key_is_refused_everywhere_within_seconds(
    node_factory: Callable[..., NodeProcess], tmp_path: Path,
) -> None:
    a, b = _pool(node_factory)
    key_file = tmp_path / "laptop.gateway-key"
    issued = _key_cli(a, "add", "laptop", "--key-file", str(key_file))
    assert issued.returncode == 0, issued.stderr
    assert key_file.stat().st_mode & 0o077 == 0
    key = parse_key(key_file.read_text())
    _poll(lambda: _asks(a.control, key) and _asks(b.control, key), "the key reaches b")
    gw = write_gateway_config(tmp_path / "laptop.toml", [a.control, b.control],
                              key=key.line())
    gw.start()
    try:
        served(gw.imap, ALICE)
        for node in (a, b):
            assert _handoff_auth(node.smtp, key) == 235
            assert _link(node.imap, key).startswith(b"g OK [XGATEWAY]")
        listed = _key_cli(b, "list")
        assert "laptop" in listed.stdout and "active" in listed.stdout

        revoked = _key_cli(b, "revoke", "laptop")  # on b: a must learn it by replication
        assert revoked.returncode == 0, revoked.stderr
        took = _poll(lambda: not _asks(a.control, key) and not _asks(b.control, key),
                     "both nodes refuse the revoked key")
        print(f"revoked key refused by both nodes after {took:.1f}s")
        for node in (a, b):
            assert _handoff_auth(node.smtp, key) == 535
            assert _link(node.imap, key).startswith(b"g NO [AUTHENTICATIONFAILED]")
        assert "revoked" in _key_cli(a, "list").stdout
        again = _key_cli(a, "add", "laptop", "--key-file", str(key_file))
        assert again.returncode != 0  # a revoked name is never brought back
        with Raw(gw.imap) as client:  # the gateway can no longer find anyone
            reply = client.command(b"l", f'LOGIN "{ALICE[0]}" "{ALICE[1]}"'.encode())
            assert reply[-1].startswith(b"l NO [UNAVAILABLE]"), reply[-1]
        # The pool itself carries on: the pool secret and the other gateway keys still work.
        assert _asks(a.control, SECRET.encode())
        assert _asks(b.control, parse_key(GATEWAY_KEY))
    finally:
        gw.kill()


def test_gateway_keys_answer_load_but_not_as_the_pool(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A node answers a gateway key with that key: a host without it cannot forge answers."""
    nodes = _pool(node_factory)
    key = parse_key(GATEWAY_KEY)
    other = GatewayKey(key.name, b"not-the-right-secret-0123456789")

    async def ask(credential: GatewayKey) -> bool:
        try:
            await query(nodes[0].control, LoadRequest(), credential, timeout=1.0)
        except (TimeoutError, OSError, ControlError):
            return False
        return True
    assert asyncio.run(ask(key))
    assert not asyncio.run(ask(other))
