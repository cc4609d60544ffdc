"""A short fuzz profile (about a minute): mutated commands, garbage and the amplification shapes
of issue 9 against a node and a gateway, while a normal client must be served throughout."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable

import pytest

from tests.security.support import Raw, served
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(300)
SECONDS_PER_TARGET = 25.0
CHECK_EVERY = 3.0

SEEDS = [
    b"NOOP", b"CAPABILITY", b'LIST "" "*"', b'LIST "" "%/%"', b"SELECT INBOX", b"EXAMINE INBOX",
    b"FETCH 1:* (FLAGS UID)", b"UID FETCH 1:* (BODY.PEEK[HEADER] RFC822.SIZE)",
    b"SEARCH OR FROM a SUBJECT b", b"STORE 1 +FLAGS (\\Seen)", b"STATUS INBOX (MESSAGES)",
    b"CREATE fuzz", b"RENAME fuzz fuzz2", b"DELETE fuzz2", b"APPEND INBOX {5+}\r\nhello",
    b"UID SEARCH ALL", b"ENABLE CONDSTORE", b"ID NIL", b"NAMESPACE",
]
SHAPES = [
    b'LIST "" "' + b"%" * 200 + b'b"',
    b'LIST "" "' + b"*%" * 300 + b'"',
    b"FETCH 1:* (" + b" ".join([b"BODY.PEEK[]"] * 60) + b")",
    b"FETCH 1:* (" + b" ".join([b"BODY.PEEK[1.2.3.4.5]"] * 40) + b")",
    b"SEARCH " + b"OR " * 300 + b"ALL " * 301,
    b"SEARCH " + b"NOT " * 2000 + b"ALL",
    b"UID FETCH " + b",".join(b"%d" % i for i in range(1, 6000, 2)) + b" (FLAGS)",
    b"NOOP {4000+}\r\n" + b"x" * 4000 + b" {4000+}\r\n" + b"y" * 4000,
]
JUNK = b"()[]{}<>\"\\%*~+ \r\n\x00\xff0123456789ABCxyz"


def _mutate(rng: random.Random, command: bytes) -> bytes:
    data = bytearray(command)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        pos = rng.randint(0, len(data))
        if op < 0.4:
            data[pos:pos] = bytes(rng.choice(JUNK) for _ in range(rng.randint(1, 8)))
        elif op < 0.7 and data:
            del data[pos : pos + rng.randint(1, 6)]
        elif data:
            data[pos : pos + 1] = data[pos : pos + 1] * rng.randint(2, 200)
    return bytes(data)


def _attack(address: tuple[str, int], rng: random.Random, deadline: float) -> int:
    """Throw commands for a while, on fresh connections now and then; returns how many."""
    sent = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), Raw(address, timeout=10) as raw:
            raw.login()
            for i in range(rng.randint(5, 40)):
                if time.monotonic() > deadline:
                    break
                pick = rng.random()
                body = (rng.choice(SHAPES) if pick < 0.25 else
                        bytes(rng.choice(JUNK) for _ in range(rng.randint(1, 300)))
                        if pick < 0.35 else _mutate(rng, rng.choice(SEEDS)))
                raw.send(b"z%d " % i + body + b"\r\n")
                raw.sock.settimeout(10)
                raw.until_tag(b"z%d" % i, limit=2000)
                sent += 1
    return sent


def _fuzz(address: tuple[str, int], seed: int) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + SECONDS_PER_TARGET
    sent = 0
    while time.monotonic() < deadline:
        sent += _attack(address, rng, min(deadline, time.monotonic() + CHECK_EVERY))
        served(address)  # a normal client is served throughout
    print(f"fuzz {address}: {sent} commands")


def _prepare(node: NodeProcess) -> None:
    with Raw(node.imap) as alice:
        alice.login()
        for i in range(5):
            message = (b"Subject: %d\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
                       b'boundary="b"\r\n\r\n--b\r\n\r\npart %d\r\n--b--\r\n' % (i, i))
            alice.send(b"a APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
            alice.until_tag(b"a")


def test_fuzz_node_and_gateway(
    victim: Callable[..., NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    node = victim('command_cpu_budget = "2s"')
    _prepare(node)
    gateway = gateway_factory([node])
    _fuzz(node.imap, 9)
    _fuzz(gateway.imap, 10)
    assert node.proc is not None and node.proc.poll() is None
    assert gateway.proc is not None and gateway.proc.poll() is None
    for log in (node.log(), gateway.log()):
        assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:3000]
    with socket.create_connection(node.imap, timeout=10) as sock:
        assert sock.recv(100).startswith(b"* OK")
