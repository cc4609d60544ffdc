"""Two stores with their replicators in one process (real sockets, real SQLite files)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path

import pytest

from mailmux.backend import config as backend_config
from mailmux.backend.load import LoadMeter
from mailmux.backend.message.search import IndexEntry
from mailmux.backend.store import sqlite as sqlite_module
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.protocol.imap.commands import SearchKey
from mailmux.replication.peers import Replicator
from tests.support.nodes import SECRET
from tests.support.ports import free_port

ALICE = "alice@example.test"


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)  # polling with a deadline


async def _true(value: bool) -> bool:
    return value


class Pair:
    def __init__(self) -> None:
        self.stores: dict[str, SqliteStore] = {}
        self.replicators: dict[str, Replicator] = {}
        self.now = datetime(2026, 11, 24, 12, 0)


def _certificate(directory: Path) -> dict[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=mailmux-pool",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return {"tls_cert": str(cert), "tls_key": str(key)}


def _config(tmp_path: Path, node: str, other: str, ports: dict[str, int], mode: str,
            tls: dict[str, str]) -> backend_config.BackendConfig:
    return backend_config.from_dict({
        "node_id": node, "data_dir": str(tmp_path / node), "domains": ["example.test"],
        "pool_secret": SECRET, "listen_imap": "127.0.0.1:0", "listen_smtp": "127.0.0.1:0",
        "listen_control": "127.0.0.1:0", **tls,
        "replication": {"listen": f"127.0.0.1:{ports[node]}",
                        "peers": [f"{other}=127.0.0.1:{ports[other]}"], "mode": mode,
                        "batch_window": "02:00-05:00", "batch_backlog": 1000,
                        "copy_timeout": "3s",
                        "copies": {"high": "all", "normal": 1, "bulk": 1}},
    })


@pytest.fixture
async def pair(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    mode = getattr(request, "param", "immediate")
    tls = _certificate(tmp_path) if mode == "tls" else {}
    mode = "immediate" if mode == "tls" else mode
    ports = {"a": free_port(), "b": free_port()}
    result = Pair()
    opened = []
    for node, other in (("a", "b"), ("b", "a")):
        config = _config(tmp_path, node, other, ports, mode, tls)
        manager = SqliteStore.open(config.db_path, node, config.domains)
        store = await manager.__aenter__()
        opened.append(manager)
        replicator = Replicator(config, store, LoadMeter(), clock=lambda: result.now)
        await replicator.start()
        result.stores[node], result.replicators[node] = store, replicator
    try:
        yield result
    finally:
        for replicator in result.replicators.values():
            await replicator.close()
        for manager in opened:
            await manager.__aexit__(None, None, None)


async def test_user_mailboxes_and_messages_replicate_with_the_same_uids(pair: Pair) -> None:
    a, b = pair.stores["a"], pair.stores["b"]
    await a.add_user(ALICE, "pw")
    await until(lambda: b.has_user(ALICE))
    assert await b.authenticate(ALICE, "pw")
    result = await a.append(ALICE, "INBOX", b"Subject: one\r\n\r\nbody\r\n", flags=["\\Flagged"])

    async def arrived() -> bool:
        return (await b.get_mailbox(ALICE, "INBOX")).messages == 1

    await until(arrived)
    box_a, box_b = await a.get_mailbox(ALICE, "INBOX"), await b.get_mailbox(ALICE, "INBOX")
    assert box_a.uidvalidity == box_b.uidvalidity
    [meta] = await b.messages(ALICE, box_b.id)
    assert (meta.uid, meta.guid, meta.flags) == (result.uid, result.guid, {"\\Flagged"})
    assert await b.body(box_b.id, meta.uid) == b"Subject: one\r\n\r\nbody\r\n"
    await b.store_flags(ALICE, box_b.id, [meta.uid], "add", ["\\Seen"])

    async def seen_on_a() -> bool:
        return "\\Seen" in (await a.messages(ALICE, box_a.id))[0].flags

    await until(seen_on_a)
    await a.expunge(ALICE, box_a.id, [meta.uid])

    async def gone_on_b() -> bool:
        return (await b.get_mailbox(ALICE, "INBOX")).messages == 0

    await until(gone_on_b)


async def test_high_importance_waits_for_the_peer(pair: Pair) -> None:
    a, b = pair.stores["a"], pair.stores["b"]
    await a.add_user(ALICE, "pw")
    await until(lambda: b.has_user(ALICE))
    await a.append(ALICE, "INBOX", b"Importance: high\r\nSubject: urgent\r\n\r\nx\r\n")
    # No polling: acknowledged means the peer already has it.
    assert (await b.get_mailbox(ALICE, "INBOX")).messages == 1


@pytest.mark.parametrize("pair", ["batch"], indirect=True)
async def test_batch_mode_ships_only_inside_the_window(pair: Pair) -> None:
    a, b = pair.stores["a"], pair.stores["b"]
    link = pair.replicators["a"].peers["b"]
    await until(lambda: _true(link.connected))
    await a.add_user(ALICE, "pw")
    rounds = link.rounds

    async def decided_twice() -> bool:
        return link.rounds >= rounds + 2  # the shipper looked at the backlog after the change

    await until(decided_twice)
    assert not await b.has_user(ALICE) and link.shipped == 0
    pair.now = datetime(2026, 11, 25, 2, 30)
    await until(lambda: b.has_user(ALICE))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
@pytest.mark.parametrize("pair", ["tls"], indirect=True)
async def test_links_use_tls_when_the_node_has_a_certificate(pair: Pair) -> None:
    a, b = pair.stores["a"], pair.stores["b"]
    await a.add_user(ALICE, "pw")
    await until(lambda: b.has_user(ALICE))
    assert pair.replicators["a"]._client_tls is not None
    link = pair.replicators["a"].peers["b"]
    assert link.connected and link.shipped > 0


async def test_per_peer_backlog_and_lag_in_the_load_report(pair: Pair) -> None:
    a = pair.stores["a"]
    await a.add_user(ALICE, "pw")
    details = pair.replicators["a"].details()

    link = pair.replicators["a"].peers["b"]

    async def caught_up() -> bool:
        figures = pair.replicators["a"].details()
        return link.shipped > 0 and figures["peer.b.backlog"] == 0.0

    await until(caught_up)
    assert set(details) == {"peer.b.backlog", "peer.b.connected",
                            "peer.b.responsive", "peer.b.lag_s"}
    assert pair.replicators["a"].details()["peer.b.connected"] == 1.0


async def test_a_peer_that_comes_back_is_linked_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that starts dials us; our dialer, deep in its backoff, tries again at once
    (a new home there would otherwise refuse changes for want of a linked peer)."""
    from mailmux.replication import peers

    monkeypatch.setattr(peers, "FIRST_BACKOFF", 600.0)
    monkeypatch.setattr(peers, "MAX_BACKOFF", 600.0)
    ports = {"a": free_port(), "b": free_port()}
    replicators: list[Replicator] = []
    async with contextlib.AsyncExitStack() as stack:
        for node, other in (("a", "b"), ("b", "a")):
            config = _config(tmp_path, node, other, ports, "immediate", {})
            store = await stack.enter_async_context(
                SqliteStore.open(config.db_path, node, config.domains))
            replicator = Replicator(config, store, LoadMeter())
            stack.push_async_callback(replicator.close)
            await replicator.start()
            replicators.append(replicator)
            if node == "a":  # b is not up yet: a's first dial fails, the next is 600 s away
                link = replicator.peers["b"]
                await until(lambda link=link: _true(link.last_error != ""))  # type: ignore[misc]
        await until(lambda: _true(link.connected))


async def test_the_peer_parses_shipped_messages_off_its_writer_thread(
    pair: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message's SEARCH index entry (a MIME parse) is made before the transaction, on the
    home and on the peer alike: parsed inside the peer's apply job it held the peer's writer,
    and every acknowledgement queued behind it, for the parse (APPEND's replicated round trip
    cost more than STORE's)."""
    threads: list[str] = []
    real = sqlite_module._index_of

    def watched(body: bytes) -> IndexEntry:
        threads.append(threading.current_thread().name)
        return real(body)

    monkeypatch.setattr(sqlite_module, "_index_of", watched)
    a, b = pair.stores["a"], pair.stores["b"]
    await a.add_user(ALICE, "pw")
    await until(lambda: b.has_user(ALICE))
    for i in range(3):  # high importance: acknowledged only once b holds it
        body = f"Importance: high\r\nSubject: m{i}\r\n\r\nx{i}\r\n".encode()
        await a.append(ALICE, "INBOX", body)
    assert (await b.get_mailbox(ALICE, "INBOX")).messages == 3
    assert len(threads) == 6, threads  # each message parsed once on a and once on b
    # small messages: parsed on the event loop (a thread hop costs more than the parse)
    assert set(threads) == {"MainThread"}, threads
    threads.clear()
    big = b"Importance: high\r\nSubject: big\r\n\r\n" + b"0123456789abcde\r\n" * 2000
    await a.append(ALICE, "INBOX", big)
    assert len(threads) == 2 and "MainThread" not in threads, threads
    assert "mailmux-writer" not in threads, threads
    found = await b.search(ALICE, (await b.get_mailbox(ALICE, "INBOX")).id,
                           SearchKey("SUBJECT", ("m1",)), 10)
    assert [uid for uid, _, _ in found] == [2], found
