"""Finding 2: memory exhaustion before login (chained literals, peer-port frames, nested JSON)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable

import pytest

from tests.security.support import Raw, rss_kib, served
from tests.support.nodes import NodeProcess, split_address

pytestmark = pytest.mark.timeout(180)
GROWTH_LIMIT_KIB = 40 * 1024


def _flood(sock: socket.socket, head: bytes, chunk: bytes, total: int) -> None:
    """Send head then chunk until total bytes went out or the server hung up."""
    with contextlib.suppress(OSError):
        sock.sendall(head)
        sent = 0
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)


def test_chained_literals_before_login_are_bounded(victim: Callable[..., NodeProcess]) -> None:
    node = victim()
    before = rss_kib(node.pid)
    with Raw(node.imap) as attacker:
        literal = b"x" * 4000 + b" {4000+}\r\n"
        _flood(attacker.sock, b"a1 NOOP {4000+}\r\n", literal * 50, 80 * 1024 * 1024)
        attacker.sock.settimeout(30)
        reply = attacker.until_tag(b"a1")
        assert reply and reply[-1].startswith(b"a1 BAD [TOOBIG]"), reply[-1:]
        assert attacker.line() == b""  # the rest cannot be skipped safely: closed
    grown = rss_kib(node.pid) - before
    assert grown < GROWTH_LIMIT_KIB, f"node grew by {grown} KiB"
    served(node.imap)


def test_chained_literals_after_login_hit_the_command_cap(
    victim: Callable[..., NodeProcess],
) -> None:
    node = victim("max_command_size = 300000")
    with Raw(node.imap) as attacker:
        attacker.login()
        attacker.send(b"a1 NOOP {60000}\r\n")
        literals = 0
        while (line := attacker.line()).startswith(b"+"):
            literals += 1
            attacker.send(b"y" * 60000 + b" {60000}\r\n")
        assert line.startswith(b"a1 NO [TOOBIG] command is too big"), line
        assert literals == 300000 // 60000 - 1  # refused before the cap was passed
        assert attacker.command(b"a2", b"NOOP")[-1].startswith(b"a2 OK")


def _replicating_node(victim: Callable[..., NodeProcess]) -> tuple[NodeProcess, tuple[str, int]]:
    node = victim('[replication]\nlisten = "127.0.0.1:0"')
    return node, split_address(str(node.ready["replication"]))


def test_peer_port_refuses_big_frames_before_authentication(
    victim: Callable[..., NodeProcess],
) -> None:
    node, peer_port = _replicating_node(victim)
    before = rss_kib(node.pid)
    with socket.create_connection(peer_port, timeout=30) as sock:
        _flood(sock, struct.pack(">I", 256 * 1024 * 1024), b"z" * 65536, 100 * 1024 * 1024)
        grown = rss_kib(node.pid) - before  # while the connection is still open
        with contextlib.suppress(OSError):
            assert sock.recv(10) == b""  # hung up without reading a frame that size
    assert grown < GROWTH_LIMIT_KIB, f"node grew by {grown} KiB"
    served(node.imap)


def test_nested_json_hello_is_refused_cleanly(victim: Callable[..., NodeProcess]) -> None:
    node, peer_port = _replicating_node(victim)
    payload = b"[" * 6000 + b"]" * 6000
    with socket.create_connection(peer_port, timeout=30) as sock:
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        with contextlib.suppress(OSError):
            assert sock.recv(10) == b""
    deadline = time.monotonic() + 15
    while "refused connection" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the log for the refusal, with a deadline
    assert "refused connection" in node.log()
    assert "Traceback" not in node.log() and "RecursionError" not in node.log()
    served(node.imap)


def test_control_tcp_port_frames_are_small(victim: Callable[..., NodeProcess]) -> None:
    node = victim()
    before = rss_kib(node.pid)
    with socket.create_connection(node.control, timeout=30) as sock:
        _flood(sock, struct.pack(">I", 64 * 1024 * 1024), b"z" * 65536, 40 * 1024 * 1024)
    assert rss_kib(node.pid) - before < GROWTH_LIMIT_KIB
    served(node.imap)
