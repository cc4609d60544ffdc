"""What relaying a command costs the gateway, counted, never timed (issue 13, gateway overhead).

A gateway runs in this test's event loop in front of a real node, so the loop's own bookkeeping
can be counted per command: tasks created, timers set, socket writes each way and FETCH parses.
A small command must cost none of the first two and one of each of the others, however many
commands came before. Also here: the silence deadline that replaced a timer per response still
ends a read from a node that stopped answering, and still lets a slow but moving one finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
from asyncio import selector_events
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailmux.gateway import responses
from mailmux.gateway.app import Gateway
from mailmux.gateway.config import from_dict, load
from mailmux.gateway.connector import BackendSession
from mailmux.gateway.errors import BackendLost
from mailmux.gateway.selection import Candidate
from mailmux.gateway.session import fastlane
from mailmux.gateway.session.client import ClientSession
from tests.gateway.conftest import ALICE
from tests.support.gateway import write_gateway_config
from tests.support.nodes import GATEWAY_KEY, NodeProcess, split_address

COMMANDS = 40
MESSAGE = b"From: bob@example.test\r\nSubject: cost\r\n\r\nhello\r\n"


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.n = reader, writer, 0

    async def run(self, command: bytes) -> list[bytes]:
        self.n += 1
        tag = b"c%d" % self.n
        self.writer.write(tag + b" " + command + b"\r\n")
        lines = []
        while True:
            line = await self.reader.readline()  # the caller's deadline bounds this
            assert line, "gateway closed the connection"
            lines.append(line)
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" OK"), line
                return lines


@contextlib.asynccontextmanager
async def gateway_client(node: NodeProcess, tmp_path: Path) -> AsyncIterator[Client]:
    # hang_timeout long: the heartbeat's own timers and probes stay out of the counts
    config_path = tmp_path / "gateway.toml"
    write_gateway_config(config_path, [node.control], extra="hang_timeout = 60.0")
    async with Gateway(load(config_path)) as gateway:
        reader, writer = await asyncio.open_connection(*split_address(gateway.ready["imap"]))
        await reader.readline()
        client = Client(reader, writer)
        try:
            async with asyncio.timeout(60):
                await client.run(b'LOGIN "%s" "%s"' % (ALICE[0].encode(), ALICE[1].encode()))
                await client.run(b"SELECT INBOX")
            yield client
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _count_writes(monkeypatch: pytest.MonkeyPatch, node: NodeProcess) -> Counter[str]:
    """Socket writes by the gateway: to the client (from its listening port) and to the node."""
    writes: Counter[str] = Counter()
    original = selector_events._SelectorSocketTransport.write

    def write(transport: Any, data: bytes) -> None:
        if transport.get_extra_info("peername")[:2] == tuple(node.imap):
            writes["to node"] += 1
        elif transport.get_extra_info("sockname")[1] != transport.get_extra_info("peername")[1]:
            writes["other"] += 1
        original(transport, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", write)
    return writes


async def test_a_small_command_costs_no_task_no_timer_one_write_each_way_one_parse(
    node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    direct = imaplib.IMAP4(*node.imap)
    direct.login(*ALICE)
    direct.append("INBOX", None, None, MESSAGE)
    direct.logout()
    async with gateway_client(node, tmp_path) as client:
        async with asyncio.timeout(60):
            for _ in range(3):  # warm: the first commands may learn UIDs, set the deadline
                await client.run(b"UID FETCH 1 (FLAGS)")
        loop = asyncio.get_running_loop()
        tasks = timers = 0
        default_factory = loop.get_task_factory()

        def count_task(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> Any:
            nonlocal tasks
            tasks += 1
            if default_factory is not None:
                return default_factory(loop, coro, **kw)
            return asyncio.Task(coro, loop=loop, **kw)

        call_at = loop.call_at

        def count_timer(when: float, callback: Callable[..., object], *args: Any,
                        **kw: Any) -> asyncio.TimerHandle:
            nonlocal timers
            timers += 1
            return call_at(when, callback, *args, **kw)

        parses = Counter[str]()
        parse_fetch = responses.parse_fetch

        def counted_parse(raw: bytes) -> responses.FetchData | None:
            parses["fetch"] += 1
            return parse_fetch(raw)

        monkeypatch.setattr(responses, "parse_fetch", counted_parse)
        writes = _count_writes(monkeypatch, node)
        try:
            async with asyncio.timeout(120):  # one timer, set before any is counted
                loop.set_task_factory(count_task)
                monkeypatch.setattr(loop, "call_at", count_timer)
                for _ in range(COMMANDS):
                    lines = await client.run(b"UID FETCH 1 (FLAGS)")
                    assert lines[0].startswith(b"* 1 FETCH (")
        finally:
            loop.set_task_factory(default_factory)
            monkeypatch.undo()
    # Before: a task per command (reading the client), a timer and a timeout per response,
    # two parses of each FETCH response. A few timers may come from the silence deadline
    # setting itself again on a slow machine, never one per command.
    assert tasks == 0
    assert timers <= 3
    assert writes["to node"] == COMMANDS
    assert writes["other"] == COMMANDS + COMMANDS  # test client's commands + gateway's answers
    # At most one: the fast lane does not even parse a FETCH whose UID and flags it has.
    assert parses["fetch"] <= COMMANDS


class _Counted:
    """A transport whose writes are counted (uvloop's are C types: no method to patch)."""

    def __init__(self, transport: Any, counts: Counter[str], name: str) -> None:
        self._transport, self._counts, self._name = transport, counts, name

    def write(self, data: bytes) -> None:
        self._counts[self._name] += 1
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _fast_lane_costs(node: NodeProcess, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    sessions: list[ClientSession] = []
    init = ClientSession.__init__

    def remembered(self: ClientSession, *args: Any) -> None:
        init(self, *args)
        sessions.append(self)

    monkeypatch.setattr(ClientSession, "__init__", remembered)
    counts = Counter[str]()
    async with gateway_client(node, tmp_path) as client:
        async with asyncio.timeout(60):
            for _ in range(3):  # warm: the first commands may learn UIDs, set the deadline
                await client.run(b"UID FETCH 1 (FLAGS)")
        (session,) = sessions
        lane = session.lane
        assert lane is not None
        assert lane.node_transport is not None
        lane.client_transport = _Counted(lane.client_transport, counts, "to client")
        lane.node_transport = _Counted(lane.node_transport, counts, "to node")
        loop = asyncio.get_running_loop()
        default_factory = loop.get_task_factory()

        def count_task(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> Any:
            counts["tasks"] += 1
            if default_factory is not None:
                return default_factory(loop, coro, **kw)
            return asyncio.Task(coro, loop=loop, **kw)

        def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
            def counted(self: Any, *args: Any) -> Any:
                if self is not client.reader:  # the test client's own reads are no cost
                    counts[name] += 1
                return original(self, *args)
            return counted

        # The session's coroutine wakes for a command only through its stream readers
        # (fed by their protocols) and then runs `command`: neither may happen.
        monkeypatch.setattr(asyncio.StreamReader, "feed_data",
                            counting("stream reads", asyncio.StreamReader.feed_data))
        monkeypatch.setattr(ClientSession, "command",
                            counting("loop commands", ClientSession.command))
        before = dict(fastlane.FIGURES)
        try:
            async with asyncio.timeout(120):
                loop.set_task_factory(count_task)
                for i in range(COMMANDS):
                    lines = await client.run(b"UID FETCH 1 (FLAGS)" if i % 2 else b"NOOP")
                    assert lines[-1].startswith(b"c"), lines
        finally:
            loop.set_task_factory(default_factory)
            monkeypatch.undo()
    counts["relayed"] = fastlane.FIGURES["relayed"] - before["relayed"]
    counts["handed over"] = fastlane.FIGURES["handed over"] - before["handed over"]
    return counts


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_fast_lane_command_wakes_nothing_and_writes_once_each_way(
    loop: str, node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    factory = None if loop == "asyncio" else pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        if loop == "uvloop":
            assert type(runner.get_loop()).__module__.startswith("uvloop")
        counts = runner.run(_fast_lane_costs(node, tmp_path, monkeypatch))
    # Before the lane: a wake of the session's task, a stream read each way and a pass
    # through `command` per command.
    assert counts["tasks"] == 0
    assert counts["stream reads"] == 0
    assert counts["loop commands"] == 0
    assert counts["to node"] == COMMANDS
    assert counts["to client"] == COMMANDS
    assert counts["relayed"] == COMMANDS
    assert counts["handed over"] == 0


def _session(request_timeout: float) -> ClientSession:
    config = from_dict({"gateway_key": GATEWAY_KEY, "pool": ["127.0.0.1:9"],
                        "request_timeout": request_timeout})
    proxy = SimpleNamespace(config=config)
    writer = SimpleNamespace(get_extra_info=lambda name: None)
    return ClientSession(proxy, asyncio.StreamReader(), writer)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _backend(serve: Callable[[asyncio.StreamWriter], Any]) -> AsyncIterator[BackendSession]:
    served: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        served.append(task)
        try:
            with contextlib.suppress(OSError):
                await serve(writer)
                await reader.read()  # hold the connection open until the gateway drops it
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(*address)
    candidate = Candidate("x", ("127.0.0.1", 9), address, ("127.0.0.1", 9), 0.0, 0.0)
    try:
        yield BackendSession(candidate, reader, writer)
    finally:
        writer.close()
        for task in served:
            task.cancel()
        await asyncio.gather(*served, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def test_a_silent_node_fails_the_read_in_flight() -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        writer.write(b"* 1 FETCH (BODY[] {10}\r\nabc")  # then nothing more
        await writer.drain()

    session = _session(request_timeout=0.3)
    async with _backend(silent) as backend:
        with pytest.raises(BackendLost, match="did not answer in time"):
            await asyncio.wait_for(session.read_backend(backend), 30)
    session.watchdog.stop()


async def test_a_slow_node_that_keeps_sending_is_no_silent_one() -> None:
    body = b"x" * 30

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"* 1 FETCH (BODY[] {%d}\r\n" % len(body))
        for i in range(len(body)):  # 30 pieces, 0.1 s apart: 3 s in all, over the 1 s deadline
            writer.write(body[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.1)  # the backend's pace, not synchronisation
        writer.write(b")\r\n")
        await writer.drain()

    session = _session(request_timeout=1.0)
    async with _backend(trickle) as backend:
        response = await asyncio.wait_for(session.read_backend(backend), 60)
    session.watchdog.stop()
    assert response.raw.endswith(body + b")\r\n")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_gateway_relays_on_either_event_loop(
    loop: str, node: NodeProcess, gateway_factory: Callable[..., Any],
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    gateway = gateway_factory([node], extra=f'event_loop = "{loop}"')
    assert gateway.ready["event_loop"] == loop
    client = imaplib.IMAP4(*gateway.imap)
    client.login(*ALICE)
    client.append("INBOX", None, None, MESSAGE)
    client.select("INBOX")
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK" and any(isinstance(p, tuple) and p[1] == MESSAGE for p in data)
    client.logout()
