"""`mailmux-gateway demo`: a whole pool on this machine, for a first look or a Thunderbird test.

Starts N backend nodes as child processes (each in its own process group, so each can be killed
by PID to watch failover) that replicate to each other, creates alice@example.test and
bob@example.test with fresh random passwords (on the first node: replication copies them), then
runs a gateway in this process and prints one JSON line saying where everything is. Ctrl-C (or
SIGTERM) stops the gateway and then every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mailmux.gateway import config as gateway_config
from mailmux.gateway.app import Gateway

log = logging.getLogger(__name__)

DOMAIN = "example.test"
USERS = ("alice", "bob")
NODE_IDS = "abcdefghij"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@dataclass
class DemoNode:
    node_id: str
    config_path: Path
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, object] | None = None


def _port(base: int | None, offset: int) -> int:
    return 0 if base is None else base + offset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_node_config(data_dir: Path, index: int, secret: str, port_base: int | None,
                      replication_ports: list[int]) -> DemoNode:
    node_id = NODE_IDS[index]
    offset = 10 + 10 * index
    peers = [f'"{NODE_IDS[i]}=127.0.0.1:{port}"'
             for i, port in enumerate(replication_ports) if i != index]
    text = "\n".join([
        f'node_id = "{node_id}"',
        f'data_dir = "{node_id}"',
        f'domains = ["{DOMAIN}"]',
        f'pool_secret = "{secret}"',
        f'listen_imap = "127.0.0.1:{_port(port_base, offset)}"',
        f'listen_smtp = "127.0.0.1:{_port(port_base, offset + 1)}"',
        f'listen_control = "127.0.0.1:{_port(port_base, offset + 2)}"',
        "[replication]",
        f'listen = "127.0.0.1:{replication_ports[index]}"',
        f"peers = [{', '.join(peers)}]",
        "",
    ])
    path = data_dir / f"{node_id}.toml"
    path.write_text(text)
    return DemoNode(node_id, path)


def _backend(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailmux.backend", *args]


def add_user(node: DemoNode, user: str, password: str) -> None:
    result = subprocess.run(
        _backend("user", "add", user, "--config", str(node.config_path)),
        input=password + "\n", capture_output=True, text=True, timeout=60, check=False,
    )
    if result.returncode != 0 and "exists" not in result.stderr:
        raise RuntimeError(f"adding {user} on node {node.node_id}: {result.stderr.strip()}")


async def start_node(node: DemoNode, log_file: IO[bytes]) -> None:
    node.proc = subprocess.Popen(
        _backend("run", "--config", str(node.config_path)),
        stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
    )
    assert node.proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(node.proc.stdout.readline), READY_TIMEOUT)
    if not line:
        raise RuntimeError(f"node {node.node_id} exited before it was ready (see its log)")
    node.ready = json.loads(line)


def stop_nodes(nodes: list[DemoNode]) -> None:
    running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    for node in running:
        assert node.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGTERM)
    for node in running:
        assert node.proc is not None
        try:
            node.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
    for node in nodes:
        if node.proc is not None and node.proc.stdout is not None:
            node.proc.stdout.close()


async def run_demo(count: int, data_dir: Path, port_base: int | None) -> None:
    if not 1 <= count <= len(NODE_IDS):
        raise ValueError(f"--nodes must be 1-{len(NODE_IDS)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)
    # Peers must know each other's replication port before any of them starts.
    replication_ports = [_port(port_base, 13 + 10 * i) or _free_port() for i in range(count)]
    nodes = [write_node_config(data_dir, i, secret, port_base, replication_ports)
             for i in range(count)]
    users = [(f"{name}@{DOMAIN}", secrets.token_urlsafe(9)) for name in USERS]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logs = [(data_dir / f"{n.node_id}.log").open("ab") for n in nodes]
    try:
        # Users are created on the first node; replication brings them to the others.
        for user, password in users:
            await asyncio.to_thread(add_user, nodes[0], user, password)
        await asyncio.gather(*(start_node(n, f) for n, f in zip(nodes, logs, strict=True)))
        config = gateway_config.from_dict({
            "pool_secret": secret,
            "listen_imap": f"127.0.0.1:{_port(port_base, 0)}",
            "listen_submission": f"127.0.0.1:{_port(port_base, 1)}",
            "pool": [str(n.ready["control"]) for n in nodes if n.ready],
            "domains": [DOMAIN],
        })
        async with Gateway(config) as gateway:
            print(json.dumps({
                **gateway.ready,
                "nodes": [{"id": n.node_id, "pid": n.proc.pid if n.proc else None,
                           **{k: n.ready.get(k) for k in ("imap", "smtp", "control")}}
                          for n in nodes if n.ready is not None],
                "users": [{"user": u, "password": p} for u, p in users],
                "data_dir": str(data_dir),
            }), flush=True)
            await stop.wait()
    finally:
        await asyncio.to_thread(stop_nodes, nodes)
        for f in logs:
            f.close()
