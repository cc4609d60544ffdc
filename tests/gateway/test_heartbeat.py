"""The heartbeat in-process: a silent control address is found hung; data is life; SMTP
transfers to a hung node are abandoned."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mailmux.gateway import config as gateway_config
from mailmux.gateway.pool import Pool
from mailmux.gateway.selection import Candidate
from mailmux.gateway.session.heartbeat import Heartbeat
from mailmux.gateway.submission import SubmissionHandler
from mailmux.protocol.control.codec import NONCE_SIZE, ReplayCache, decode, encode
from mailmux.protocol.control.messages import HealthReply

SECRET = b"heartbeat-test-secret-0123456789"


@pytest.fixture
def silent() -> Iterator[tuple[str, int]]:
    """A UDP address that receives HEALTH requests and never answers (a stopped node)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()
    finally:
        sock.close()


def test_a_silent_node_is_found_hung(silent: tuple[str, int]) -> None:
    async def main() -> list[str]:
        hung: list[str] = []
        beat = Heartbeat(SECRET, hang_timeout=0.4)
        beat.register("x", silent, hung.append)
        deadline = time.monotonic() + 20
        while not hung and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling with a deadline
        await beat.close()
        return hung

    hung = asyncio.run(main())
    assert len(hung) == 1 and "x hung" in hung[0]


def test_bytes_from_the_node_count_as_life(silent: tuple[str, int]) -> None:
    async def main() -> tuple[list[str], int]:
        hung: list[str] = []
        beat = Heartbeat(SECRET, hang_timeout=0.4)
        watch = beat.register("x", silent, hung.append)
        rounds = 0
        while rounds < 40 and not hung:  # two seconds of a transfer that keeps moving
            watch.heard()
            await asyncio.sleep(0.05)  # the pace of the simulated transfer
            rounds += 1
        await beat.close()
        return hung, rounds

    hung, rounds = asyncio.run(main())
    assert hung == [] and rounds == 40


def test_an_smtp_transfer_to_a_hung_node_is_abandoned(silent: tuple[str, int]) -> None:
    config = gateway_config.from_dict({
        "gateway_key": "heartbeat-test:" + SECRET.decode(), "pool": [f"{silent[0]}:{silent[1]}"],
        "hang_timeout": 0.4, "request_timeout": 600,
    })

    async def main() -> BaseException | None:
        pool = Pool(config)
        handler = SubmissionHandler(config, pool)
        candidate = Candidate("x", silent, ("127.0.0.1", 1), ("127.0.0.1", 1), 0.0, 0.0)
        never = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(handler._watched(candidate, never), 30)
        except TimeoutError as exc:
            return exc
        finally:
            await pool.close()
        return None

    error = asyncio.run(main())
    assert error is not None and "hung" in str(error)


@pytest.fixture
def forgetful() -> Iterator[tuple[str, int]]:
    """A node that answers HEALTH, except that every second request is lost on the way (a
    dropped datagram, or a node busy for a moment): the answers it does give are life."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        cache = ReplayCache(max_entries=256)
        count = 0
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            count += 1
            if count % 2:
                continue
            _, envelope = decode(data, SECRET, now=time.time(), replay_cache=cache)
            reply = HealthReply(node_id="x", ok=True, uptime=1.0, version="test")
            sock.sendto(encode(reply, SECRET, now=time.time(), nonce=os.urandom(NONCE_SIZE),
                               request_id=envelope.request_id), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


def test_a_lost_probe_is_no_hang(forgetful: tuple[str, int]) -> None:
    """One unanswered probe must not leave the node unasked until the verdict: probes go out
    every interval, so the next one's answer arrives in time."""
    async def main() -> tuple[list[str], int]:
        hung: list[str] = []
        beat = Heartbeat(SECRET, hang_timeout=0.4)
        beat.register("x", forgetful, hung.append)
        rounds = 0
        while rounds < 60 and not hung:  # three seconds, several hang_timeouts
            await asyncio.sleep(0.05)  # the watch runs meanwhile
            rounds += 1
        await beat.close()
        return hung, rounds

    hung, rounds = asyncio.run(main())
    assert hung == [] and rounds == 60
