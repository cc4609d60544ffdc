"""The node process (`python -m mailmux.backend run`), and the demo configs in configs/."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from mailmux.backend import config as backend_config
from mailmux.backend.control.client import query
from mailmux.gateway import config as gateway_config
from mailmux.protocol.control.messages import WhoRequest
from tests.support.nodes import SECRET, NodeProcess, split_address

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STOP_DEADLINE = 15.0


def close_stdout(node: NodeProcess) -> None:
    """NodeProcess leaves its stdout pipe open after the process ended (a ResourceWarning)."""
    if node.proc is not None and node.proc.stdout is not None:
        node.proc.stdout.close()


def test_ready_line_ports_and_clean_sigterm(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("a", extra='listen_lmtp = "127.0.0.1:0"')
    node.add_user("alice@example.test", "alice-pw")
    node.start()
    ready = node.ready
    assert set(ready) == {
        "node", "pid", "imap", "smtp", "lmtp", "control", "replication", "imaps", "metrics"}
    assert ready["replication"] is None  # no [replication] listen in this config
    assert (ready["node"], ready["pid"]) == ("a", node.pid)
    assert json.loads((node.data_dir / "ready.json").read_text()) == ready

    with smtplib.SMTP(*node.smtp, timeout=10) as client:
        code, reply = client.ehlo()
        assert code == 250 and b"ENHANCEDSTATUSCODES" in reply
        assert client.sendmail("s@example.org", ["alice@example.test"], b"Subject: x\r\n\r\n") == {}
    with smtplib.LMTP(*split_address(str(ready["lmtp"])), timeout=10) as lmtp:
        assert lmtp.ehlo()[0] == 250
    with socket.create_connection(node.imap, timeout=10) as imap:
        assert imap.recv(2) == b"* "

    who = asyncio.run(
        query(node.control, WhoRequest("alice@example.test"), SECRET.encode(), timeout=5.0)
    )
    assert who.serves and who.node_id == "a"
    assert (who.imap, who.smtp) == (ready["imap"], ready["smtp"])

    assert node.stop(timeout=STOP_DEADLINE) == 0
    close_stdout(node)
    assert not (node.data_dir / "ready.json").exists()
    assert "Traceback" not in node.log()
    assert " a INFO " in node.log()  # log lines name the node


def test_sigint_stops_cleanly_too(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("b")
    node.start()
    node.signal(signal.SIGINT)
    assert node.proc is not None
    assert node.proc.wait(timeout=STOP_DEADLINE) == 0
    close_stdout(node)
    assert "KeyboardInterrupt" not in node.log()


def test_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'node_id = "a"\ndata_dir = "{tmp_path}"\ndomains = []\n')
    result = subprocess.run(
        [sys.executable, "-m", "mailmux.backend", "run", "--config", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "config error: domains: expected a non-empty list of domain names\n"
    assert result.stdout == ""


def test_port_in_use_is_an_error_not_a_traceback(
    node_factory: Callable[..., NodeProcess],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = node_factory("c")
        text = node.config_path.read_text()
        node.config_path.write_text(
            text.replace('listen_smtp = "127.0.0.1:0"', f'listen_smtp = "127.0.0.1:{port}"')
        )
        with pytest.raises(RuntimeError, match="exited early"):
            node.start()
    assert node.proc is not None
    assert node.proc.wait(timeout=STOP_DEADLINE) == 1
    close_stdout(node)
    assert "Traceback" not in node.log()
    assert "error:" in node.log()
    assert not (node.data_dir / "ready.json").exists()


# the demo configs -------------------------------------------------------------------------


def test_demo_pool_configs_load_and_fit_together(tmp_path: Path) -> None:
    nodes = {n: backend_config.load(CONFIGS / f"node-{n}.toml") for n in ("a", "b", "c")}
    assert {c.node_id for c in nodes.values()} == {"a", "b", "c"}
    ports = [
        address[1]
        for c in nodes.values()
        for address in (c.listen_imap, c.listen_smtp, c.listen_control, c.replication.listen)
        if address is not None
    ]
    assert len(ports) == 12 and len(set(ports)) == 12
    assert len({c.pool_secret for c in nodes.values()}) == 1
    for node_id, config in nodes.items():
        peers = {peer_id: (host, port) for peer_id, host, port in config.replication.peers}
        assert set(peers) == set(nodes) - {node_id}
        for peer_id, address in peers.items():
            assert address == nodes[peer_id].replication.listen
        assert config.data_dir.resolve() == (CONFIGS.parent / "data" / node_id).resolve()

    raw = tomllib.loads((CONFIGS / "gateway.toml").read_text())
    assert {"gateway_key_file", "listen_imap", "listen_submission", "selection", "pool"} <= set(raw)
    assert "pool_secret" not in raw and "pool_secret_file" not in raw  # servers only
    # The key file is what `gateway-key add --key-file` writes; here a stand-in beside a copy.
    (tmp_path / "gateway.toml").write_text((CONFIGS / "gateway.toml").read_text())
    (tmp_path / raw["gateway_key_file"]).write_text("demo-gateway:" + "k" * 43 + "\n")
    gateway = gateway_config.load(tmp_path / "gateway.toml")
    assert set(gateway.pool) == {c.listen_control for c in nodes.values()}
    assert gateway.gateway_key.name == "demo-gateway"
