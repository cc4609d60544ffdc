"""The control endpoint over real UDP and TCP sockets on 127.0.0.1, with the real client."""

from __future__ import annotations

import asyncio
import errno
import importlib
import importlib.util
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from mailmux.backend.config import BackendConfig
from mailmux.backend.control.client import fan_out, query
from mailmux.backend.control.server import ControlServer
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.interface import MailStore
from mailmux.protocol.control.codec import NONCE_SIZE, decode, encode, frame
from mailmux.protocol.control.messages import (
    HealthReply,
    HealthRequest,
    LoadReply,
    LoadRequest,
    WhoReply,
    WhoRequest,
)
from mailmux.protocol.control.replay import ReplayCache

SECRET = b"control-test-secret"
ALICE = "alice@example.test"
TIMEOUT = 5.0


class UsersAndBoards:
    """Only what the control server reads from a store (the store is not under test here)."""

    def __init__(self, users: set[str], boards: set[str]) -> None:
        self.users = users
        self.boards = boards

    async def has_user(self, user: str) -> bool:
        return user in self.users

    async def has_board(self, name: str) -> bool:
        return name in self.boards


class FailingStore(UsersAndBoards):
    async def has_user(self, user: str) -> bool:
        if user == "explode@example.test":
            raise RuntimeError("disk on fire")
        return await super().has_user(user)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Any]:
    """The real SQLite store with alice and board "news" when it exists, else the double."""
    if importlib.util.find_spec("mailmux.backend.store.sqlite") is None:
        yield UsersAndBoards({ALICE}, {"news"})
        return
    sqlite = importlib.import_module("mailmux.backend.store.sqlite")
    async with sqlite.SqliteStore.open(tmp_path / "store.sqlite3", "a", ("example.test",)) as real:
        await real.add_user(ALICE, "alice-pw")
        await real.add_board("news")
        yield real


def make_config(tmp_path: Path, node_id: str = "a") -> BackendConfig:
    return BackendConfig(
        node_id=node_id,
        data_dir=tmp_path,
        domains=("example.test",),
        pool_secret=SECRET,
        listen_imap=("127.0.0.1", 0),
        listen_smtp=("127.0.0.1", 0),
        listen_control=("127.0.0.1", 0),
    )


async def start_server(
    tmp_path: Path, store: Any, node_id: str = "a", meter: LoadMeter | None = None
) -> tuple[ControlServer, tuple[str, int]]:
    server = ControlServer(make_config(tmp_path, node_id), store, meter or LoadMeter())
    (address,) = await server.start()
    server.endpoints = {"imap": "127.0.0.1:14301", "smtp": "127.0.0.1:12501"}
    return server, address


@pytest.fixture
async def control(
    tmp_path: Path, store: Any
) -> AsyncIterator[tuple[ControlServer, tuple[str, int]]]:
    server, address = await start_server(tmp_path, store)
    try:
        yield server, address
    finally:
        await server.close()


async def poll(condition: Callable[[], bool], deadline: float = TIMEOUT) -> None:
    """Wait for a condition the server reaches asynchronously, failing after a deadline."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.005)


def send_udp(address: tuple[str, int], data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, address)


def signed_request(
    message: WhoRequest | LoadRequest | HealthRequest,
    *,
    secret: bytes = SECRET,
    now: float | None = None,
) -> bytes:
    return encode(
        message, secret, now=time.time() if now is None else now, nonce=os.urandom(NONCE_SIZE)
    )


# --- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_who_answers_for_users_and_boards(
    control: tuple[ControlServer, tuple[str, int]], transport: Any
) -> None:
    server, address = control
    cases = {
        ALICE: True,
        "bob@example.test": False,
        "board+news@example.test": True,
        "board+nope@example.test": False,
        "board+news@elsewhere.test": False,
    }
    for user, serves in cases.items():
        reply = await query(address, WhoRequest(user), SECRET, timeout=TIMEOUT, transport=transport)
        assert reply == WhoReply(
            node_id="a",
            user=user,
            serves=serves,
            imap="127.0.0.1:14301",
            smtp="127.0.0.1:12501",
            load=reply.load,
        )
    assert server.answered["WhoRequest"] == len(cases)
    assert not server.dropped


async def test_udp_and_tcp_share_the_port(
    control: tuple[ControlServer, tuple[str, int]],
) -> None:
    _, (host, port) = control
    assert host == "127.0.0.1" and port > 0
    for transport in ("udp", "tcp"):
        reply = await query(
            (host, port), HealthRequest(), SECRET, timeout=TIMEOUT, transport=transport
        )
        assert isinstance(reply, HealthReply)


async def test_load_reply_reports_the_meter(tmp_path: Path, store: Any) -> None:
    meter = LoadMeter()
    server, address = await start_server(tmp_path, store, meter=meter)
    try:
        meter.session_opened()
        meter.session_opened()
        with meter.transaction():
            reply = await query(address, LoadRequest(), SECRET, timeout=TIMEOUT)
        assert isinstance(reply, LoadReply)
        assert reply.details["sessions"] == 2.0
        assert reply.details["transactions"] == 1.0
        assert reply.load == pytest.approx(4.0)  # 2 sessions + 2 * 1 transaction, no lag yet
        who = await query(address, WhoRequest(ALICE), SECRET, timeout=TIMEOUT)
        assert who.load == pytest.approx(2.0)
    finally:
        await server.close()


async def test_health_reply(control: tuple[ControlServer, tuple[str, int]]) -> None:
    _, address = control
    reply = await query(address, HealthRequest(), SECRET, timeout=TIMEOUT, transport="tcp")
    assert reply.node_id == "a" and reply.ok
    assert 0 <= reply.uptime < 60
    assert reply.version


# --- refusals ------------------------------------------------------------------------------


async def test_forged_datagram_is_dropped_counted_and_the_next_good_one_answered(
    control: tuple[ControlServer, tuple[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    server, address = control
    send_udp(address, signed_request(WhoRequest(ALICE), secret=b"rogue-host-secret"))
    await poll(lambda: server.dropped["bad-mac"] == 1)
    assert "127.0.0.1" in caplog.text and "bad-mac" in caplog.text
    assert SECRET.decode() not in caplog.text
    reply = await query(address, WhoRequest(ALICE), SECRET, timeout=TIMEOUT)
    assert reply.serves


async def test_replayed_stale_garbage_and_reply_datagrams_are_dropped(
    control: tuple[ControlServer, tuple[str, int]],
) -> None:
    server, address = control
    captured = signed_request(HealthRequest())
    send_udp(address, captured)
    send_udp(address, captured)
    send_udp(address, signed_request(HealthRequest(), now=time.time() - 120))
    send_udp(address, b"\x00" * 10)
    send_udp(address, b"MMC1" + b"x" * 9000)
    reply = encode(
        HealthReply("z", True, 1.0, "1"),
        SECRET,
        now=time.time(),
        nonce=os.urandom(NONCE_SIZE),
        request_id=os.urandom(NONCE_SIZE),
    )
    send_udp(address, reply)
    expected = {"replay": 1, "stale": 1, "malformed": 1, "oversized": 1, "unexpected": 1}
    await poll(lambda: dict(server.dropped) == expected)
    assert server.answered["HealthRequest"] == 1
    assert (await query(address, HealthRequest(), SECRET, timeout=TIMEOUT)).ok


async def test_a_store_failure_is_logged_and_the_server_keeps_answering(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, address = await start_server(tmp_path, FailingStore({ALICE}, set()))
    try:
        await _survives_store_failure(server, address, caplog)
    finally:
        await server.close()


async def _survives_store_failure(
    server: ControlServer, address: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    send_udp(address, signed_request(WhoRequest("explode@example.test")))
    await poll(lambda: server.dropped["error"] == 1)
    assert "disk on fire" in caplog.text
    assert (await query(address, WhoRequest(ALICE), SECRET, timeout=TIMEOUT)).serves


async def test_tcp_connection_survives_a_forged_frame(
    control: tuple[ControlServer, tuple[str, int]],
) -> None:
    server, address = control
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(frame(signed_request(HealthRequest(), secret=b"rogue-host-secret")))
        nonce = os.urandom(NONCE_SIZE)
        writer.write(frame(encode(HealthRequest(), SECRET, now=time.time(), nonce=nonce)))
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            header = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(header, "big"))
        message, envelope = decode(payload, SECRET, now=time.time(), replay_cache=ReplayCache())
        assert isinstance(message, HealthReply)
        assert envelope.request_id == nonce
        assert server.dropped["bad-mac"] == 1
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tcp_oversized_frame_closes_the_connection(
    control: tuple[ControlServer, tuple[str, int]],
) -> None:
    server, address = control
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write((1 << 20).to_bytes(4, "big"))
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b""
        assert server.dropped["oversized"] == 1
    finally:
        writer.close()
        await writer.wait_closed()


# --- the client ----------------------------------------------------------------------------


async def test_fan_out_returns_answers_fastest_first_and_skips_dead_nodes(
    tmp_path: Path, store: Any
) -> None:
    first, a = await start_server(tmp_path, store, "a")
    second, b = await start_server(tmp_path, store, "b")
    await second.close()  # b is now a closed port: ICMP refuses at once
    third, c = await start_server(tmp_path, store, "c")
    try:
        answers = await fan_out([a, b, c], WhoRequest(ALICE), SECRET, timeout=TIMEOUT)
    finally:
        await first.close()
        await third.close()
    assert sorted(addr for addr, _, _ in answers) == sorted([a, c])
    assert {reply.node_id for _, reply, _ in answers} == {"a", "c"}
    elapsed = [seconds for _, _, seconds in answers]
    assert elapsed == sorted(elapsed) and all(0 <= s < TIMEOUT for s in elapsed)


async def test_query_to_a_closed_udp_port_is_refused(tmp_path: Path, store: Any) -> None:
    server, address = await start_server(tmp_path, store)
    await server.close()
    with pytest.raises(ConnectionRefusedError):
        await query(address, HealthRequest(), SECRET, timeout=TIMEOUT)


class _Impostor(asyncio.DatagramProtocol):
    """Answers each request first with forged and unrelated replies, then with the real one."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        _, envelope = decode(data, SECRET, now=time.time(), replay_cache=ReplayCache())

        def reply(node_id: str, secret: bytes, request_id: bytes) -> bytes:
            return encode(
                HealthReply(node_id, True, 1.0, "1"),
                secret,
                now=time.time(),
                nonce=os.urandom(NONCE_SIZE),
                request_id=request_id,
            )

        self.transport.sendto(reply("forged", b"rogue-host-secret", envelope.request_id), addr)
        self.transport.sendto(reply("unrelated", SECRET, os.urandom(NONCE_SIZE)), addr)
        self.transport.sendto(reply("real", SECRET, envelope.request_id), addr)


async def test_client_accepts_only_an_authentic_reply_to_its_own_request() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Impostor, local_addr=("127.0.0.1", 0))
    try:
        address = transport.get_extra_info("sockname")[:2]
        reply = await query(address, HealthRequest(), SECRET, timeout=TIMEOUT)
        assert reply.node_id == "real"
    finally:
        transport.close()


# --- lifecycle -----------------------------------------------------------------------------


async def test_close_ends_idle_tcp_connections_promptly(tmp_path: Path, store: Any) -> None:
    server, address = await start_server(tmp_path, store)
    reader, writer = await asyncio.open_connection(*address)
    try:
        await poll(lambda: len(server._idle_connections) == 1)
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 0.5
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_start_retries_when_the_udp_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: Any = UsersAndBoards(set(), set())
    server = ControlServer(make_config(tmp_path), store, LoadMeter())
    real_bind = server._bind_udp
    attempts: list[tuple[str, int]] = []

    async def taken_once(address: tuple[str, int]) -> asyncio.DatagramTransport:
        attempts.append(address)
        if len(attempts) == 1:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return await real_bind(address)

    monkeypatch.setattr(server, "_bind_udp", taken_once)
    (address,) = await server.start()
    try:
        assert len(attempts) == 2 and attempts[1] == address
        assert (await query(address, HealthRequest(), SECRET, timeout=TIMEOUT)).ok
    finally:
        await server.close()


def test_store_double_implements_what_the_server_uses() -> None:
    # Keeps the hand-written double honest against the real interface's method names.
    for name in ("has_user", "has_board"):
        assert hasattr(MailStore, name) and hasattr(UsersAndBoards, name)


class SlowStore(UsersAndBoards):
    """has_user waits until the test lets it answer."""

    def __init__(self) -> None:
        super().__init__({ALICE}, set())
        self.release = asyncio.Event()

    async def has_user(self, user: str) -> bool:
        await self.release.wait()
        return await super().has_user(user)


async def test_close_lets_a_request_in_progress_answer(tmp_path: Path) -> None:
    store = SlowStore()
    server, address = await start_server(tmp_path, store)
    asking = asyncio.create_task(query(address, WhoRequest(ALICE), SECRET, timeout=TIMEOUT))
    await poll(lambda: len(server._tasks) == 1)
    closing = asyncio.create_task(server.close())
    await poll(lambda: server._closing)
    store.release.set()
    assert (await asyncio.wait_for(asking, TIMEOUT)).serves
    await asyncio.wait_for(closing, TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        await query(address, HealthRequest(), SECRET, timeout=TIMEOUT)
