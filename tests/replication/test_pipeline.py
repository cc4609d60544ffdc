"""Pipelined peer links (`replication/pipeline.py`): answers in order whatever order the work
finishes in, a failed link fails every waiting request, and on real stores many concurrent
W=2 changes are acknowledged through shared round trips and shared commits on the peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailmux.backend import config as backend_config
from mailmux.backend.errors import Unavailable
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.replication.peers import Replicator
from mailmux.replication.pipeline import PipelineClosed, Requests, Responder
from tests.support.nodes import SECRET
from tests.support.ports import free_port

Message = dict[str, Any]
USER = "pipe@example.test"


class Wire:
    """Two in-memory message queues standing in for a channel; `break_it` ends reads."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def receive(self, timeout: float | None = None) -> Message:
        async with asyncio.timeout(timeout):
            message = await self.inbox.get()
        if message is None:
            raise ConnectionResetError("link broke")
        return message


async def test_answers_are_matched_to_requests_in_order() -> None:
    wire = Wire()
    requests = Requests(wire, answer_timeout=5.0)
    try:
        first = await requests.send({"t": "batch", "n": 1})
        second = await requests.send({"t": "batch", "n": 2})
        assert requests.in_flight == 2 and not first.done()
        await wire.inbox.put({"t": "ack", "n": 1})
        await wire.inbox.put({"t": "ack", "n": 2})
        assert (await first)["n"] == 1 and (await second)["n"] == 2
    finally:
        await requests.close()


async def test_a_broken_link_fails_every_waiting_request() -> None:
    wire = Wire()
    requests = Requests(wire, answer_timeout=5.0)
    try:
        waiting = [await requests.send({"t": "batch", "n": n}) for n in range(3)]
        await wire.inbox.put(None)
        for future in waiting:
            with pytest.raises(PipelineClosed):
                await future
        with pytest.raises(PipelineClosed):
            await requests.send({"t": "batch"})
    finally:
        await requests.close()


async def test_a_silent_peer_fails_the_requests_at_the_deadline() -> None:
    requests = Requests(Wire(), answer_timeout=0.2)
    try:
        future = await requests.send({"t": "positions"})
        with pytest.raises(PipelineClosed):
            await asyncio.wait_for(future, 10)
    finally:
        await requests.close()


async def test_the_responder_overlaps_work_but_answers_in_arrival_order() -> None:
    wire = Wire()
    closed = asyncio.Event()
    responder = Responder(wire, closed.set)
    slow_may_finish = asyncio.Event()
    finished: list[int] = []

    async def slow() -> Message:
        await slow_may_finish.wait()
        finished.append(1)
        return {"n": 1}

    async def fast() -> Message:
        finished.append(2)
        return {"n": 2}

    async def after() -> Message:
        return {"n": 3, "saw": list(finished)}

    try:
        await responder.push(slow())
        await responder.push(fast())
        await responder.push_after(after)
        for _ in range(20):
            await asyncio.sleep(0)  # let the fast one finish first
        assert wire.sent == [] and finished == [2]  # work overlapped, nothing sent early
        slow_may_finish.set()
        async with asyncio.timeout(10):
            while len(wire.sent) < 3:
                await asyncio.sleep(0.01)  # polling with a deadline
        assert [m["n"] for m in wire.sent] == [1, 2, 3]
        assert wire.sent[2]["saw"] == [2, 1]  # computed once the answers before it were
        assert not closed.is_set()
    finally:
        await responder.close()


async def test_a_failed_answer_closes_the_link() -> None:
    wire = Wire()
    closed = asyncio.Event()
    responder = Responder(wire, closed.set)

    async def broken() -> Message:
        raise ValueError("bad batch")

    try:
        await responder.push(broken())
        async with asyncio.timeout(10):
            await closed.wait()
        with pytest.raises(PipelineClosed):
            await responder.push(broken())
    finally:
        await responder.close()


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[dict[str, SqliteStore]]:
    ports = {"a": free_port(), "b": free_port()}
    opened, replicators, out = [], [], {}
    for node, other in (("a", "b"), ("b", "a")):
        config = backend_config.from_dict({
            "node_id": node, "data_dir": str(tmp_path / node), "domains": ["example.test"],
            "pool_secret": SECRET, "listen_imap": "127.0.0.1:0", "listen_smtp": "127.0.0.1:0",
            "listen_control": "127.0.0.1:0",
            "replication": {"listen": f"127.0.0.1:{ports[node]}",
                            "peers": [f"{other}=127.0.0.1:{ports[other]}"],
                            "copy_timeout": "20s",
                            "copies": {"high": "all", "normal": 2, "bulk": 2}},
        })
        manager = SqliteStore.open(config.db_path, node, config.domains)
        store = await manager.__aenter__()
        opened.append(manager)
        replicator = Replicator(config, store, LoadMeter())
        await replicator.start()
        replicators.append(replicator)
        out[node] = store
    try:
        yield out
    finally:
        for replicator in replicators:
            await replicator.close()
        for manager in opened:
            await manager.__aexit__(None, None, None)


@pytest.mark.timeout(120)
async def test_concurrent_w2_changes_share_round_trips_and_the_peers_commits(
        stores: dict[str, SqliteStore]) -> None:
    a, b = stores["a"], stores["b"]
    await a.add_user(USER, "pw")  # an administrative write: no copies awaited
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # until the links are up and W=2 changes go through
        try:
            await a.append(USER, "INBOX", b"Subject: first\r\n\r\nx\r\n")
            break
        except Unavailable:
            assert asyncio.get_running_loop().time() < deadline, "links never came up"
            await asyncio.sleep(0.1)  # polling with a deadline
    before = b.commits
    count = 40
    await asyncio.gather(*(a.append(USER, "INBOX", f"Subject: {n}\r\n\r\nx\r\n".encode())
                           for n in range(count)))
    # Every one acknowledged means every one is on b already (W=2) ...
    assert (await b.get_mailbox(USER, "INBOX")).messages == count + 1
    # ... and b did not pay a commit (an fsync) per change: batches that arrived together
    # were applied in one transaction.
    assert b.commits - before < count, (b.commits - before, count)
