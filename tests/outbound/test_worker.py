"""The delivery worker in-process with an injected clock, against a real SMTP sink and a real
loopback DNS server (MX records), on a real SQLite store: retries, bounces, expiry."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mailmux.backend.config import from_dict
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.outbound.worker import OutboundWorker
from tests.support.dns_server import DnsServer
from tests.support.smtp_sink import SmtpSink

SENDER = "alice@example.test"
REMOTE = "x@remote.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer({("remote.test", "MX"): ["10 mx.remote.test."],
                    ("mx.remote.test", "A"): ["127.0.0.1"],
                    ("other.test", "MX"): ["10 mx.remote.test."]}) as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore.open(tmp_path / "db.sqlite3", "a", ("example.test",)) as s:
        await s.add_user(SENDER, "pw")
        yield s


def _worker(store: SqliteStore, sink: SmtpSink, dns: DnsServer, clock: Clock,
            **outbound: object) -> OutboundWorker:
    config = from_dict({
        "node_id": "a", "data_dir": "d", "domains": ["example.test"],
        "pool_secret": "secret-secret", "listen_imap": "127.0.0.1:0",
        "listen_smtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0",
        "outbound": {"mx_port": sink.port, "dns_servers": [f"127.0.0.1:{dns.address[1]}"],
                     "timeout": "10s", **outbound},
    })
    return OutboundWorker(config, store, clock=clock)


def _message(subject: str = "hello") -> bytes:
    return (f"From: {SENDER}\r\nTo: {REMOTE}\r\nSubject: {subject}\r\n"
            "Message-ID: <m1@example.test>\r\n\r\nbody line\r\n").encode()


async def _pass(worker: OutboundWorker) -> int:
    started = await worker.run_once()
    await asyncio.gather(*started)
    return len(started)


async def _inbox(store: SqliteStore) -> list[bytes]:
    box = await store.get_mailbox(SENDER, "INBOX")
    return [await store.body(box.id, m.uid) for m in await store.messages(SENDER, box.id)]


async def test_delivers_through_mx_once(store: SqliteStore, sink: SmtpSink,
                                        dns: DnsServer) -> None:
    worker = _worker(store, sink, dns, Clock())
    assert await worker.submit("m1", SENDER, [REMOTE, "y@other.test"], _message())
    assert await _pass(worker) == 1
    received = sink.messages
    # One connection per destination: the two domains share an MX but are two transactions.
    assert sorted(r for m in received for r in m.recipients) == [REMOTE, "y@other.test"]
    assert all(b"Subject: hello" in m.data for m in received)
    message = await worker.queue.get("m1")
    assert message is not None and message.state == "done"
    assert await worker.queue.body("m1") is None
    assert await _pass(worker) == 0
    assert len(sink.messages) == 2
    assert "remote.test. MX" in dns.queries and "mx.remote.test. A" in dns.queries


async def test_4xx_is_retried_on_schedule(store: SqliteStore, sink: SmtpSink,
                                         dns: DnsServer) -> None:
    clock = Clock()
    sink.handler.scripted[REMOTE] = ["451 4.7.1 greylisted, come back later",
                                     "452 4.2.2 mailbox full"]
    worker = _worker(store, sink, dns, clock, retry_intervals=["5m", "15m", "30m"])
    await worker.submit("m1", SENDER, [REMOTE], _message())
    start = clock.now
    assert await _pass(worker) == 1
    queued = await worker.queue.get("m1")
    assert queued is not None and queued.pending == [REMOTE] and queued.attempts == 1
    assert queued.next_attempt == start + 300
    assert "greylisted" in queued.recipients[REMOTE]["text"]
    clock.now = start + 299
    assert await _pass(worker) == 0
    clock.now = start + 300
    assert await _pass(worker) == 1
    queued = await worker.queue.get("m1")
    assert queued is not None and queued.attempts == 2 and queued.next_attempt == clock.now + 900
    clock.now += 900
    assert await _pass(worker) == 1
    assert [m.recipients for m in sink.messages] == [[REMOTE]]
    done = await worker.queue.get("m1")
    assert done is not None and done.state == "done" and done.done_reason == "delivered"
    assert await _inbox(store) == []


async def test_5xx_bounces_with_a_dsn_naming_recipient_and_answer(
    store: SqliteStore, sink: SmtpSink, dns: DnsServer,
) -> None:
    sink.handler.scripted["nobody@remote.test"] = ["550 5.1.1 <nobody@remote.test>: no such user"]
    worker = _worker(store, sink, dns, Clock())
    await worker.submit("m1", SENDER, ["nobody@remote.test", REMOTE], _message("bounce me"))
    assert await _pass(worker) == 1
    assert [m.recipients for m in sink.messages] == [[REMOTE]]
    [report] = await _inbox(store)
    parsed = email.message_from_bytes(report)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    text = report.decode()
    assert "nobody@remote.test" in text and "550 5.1.1 <nobody@remote.test>: no such user" in text
    assert "Final-Recipient: rfc822; nobody@remote.test" in text and "Action: failed" in text
    assert "Status: 5.1.1" in text and "Subject: bounce me" in text
    assert REMOTE not in text.split("Final-Recipient")[0].split("could not be delivered")[1]
    done = await worker.queue.get("m1")
    assert done is not None and done.state == "done" and done.done_reason == "bounced"
    assert await _pass(worker) == 0 and len(await _inbox(store)) == 1


async def test_expiry_bounces_and_null_sender_never_does(
    store: SqliteStore, sink: SmtpSink, dns: DnsServer,
) -> None:
    clock = Clock()
    sink.handler.scripted[REMOTE] = ["421 4.3.2 try later"] * 10
    worker = _worker(store, sink, dns, clock, retry_intervals=["1h"], lifetime="3h",
                     delay_warning="2h")
    await worker.submit("m1", SENDER, [REMOTE], _message("expire me"))
    await worker.submit("m2", "", [REMOTE], _message("from nobody"))
    for _ in range(3):
        await _pass(worker)
        clock.now += 3600
    warnings = await _inbox(store)
    assert len(warnings) == 1 and b"Action: delayed" in warnings[0]
    await _pass(worker)
    reports = await _inbox(store)
    assert len(reports) == 2
    assert b"Action: failed" in reports[1] and b"Status: 4.4.7" in reports[1]
    assert b"421 4.3.2 try later" in reports[1] and b"Subject: expire me" in reports[1]
    for mid in ("m1", "m2"):
        done = await worker.queue.get(mid)
        assert done is not None and done.state == "done"
    assert sink.messages == []


async def test_smarthost_route_ignores_mx(store: SqliteStore, sink: SmtpSink,
                                          dns: DnsServer) -> None:
    worker = _worker(store, sink, dns, Clock(), relay=f"127.0.0.1:{sink.port}",
                     relay_tls="none")
    await worker.submit("m1", SENDER, [REMOTE, "z@nowhere.invalid"], _message())
    assert await _pass(worker) == 1
    [got] = sink.messages
    assert got.recipients == [REMOTE, "z@nowhere.invalid"]
    assert dns.queries == []


async def test_lease_takeover_rules(store: SqliteStore, sink: SmtpSink, dns: DnsServer) -> None:
    clock = Clock()
    worker = _worker(store, sink, dns, clock, lease="10s")
    worker.nodes = ["a", "b", "c"]
    await worker.submit("m1", SENDER, [REMOTE], _message())
    queue = worker.queue
    # Another node, b, owns it with a live lease: a leaves it alone until the lease is over
    # (plus its rank's stagger), then claims with a higher epoch.
    await queue.claim("m1", 1, clock.now + 10)
    await store._write(lambda tx: tx.conn.execute(
        "UPDATE outbound_queue SET owner = 'b' WHERE id = 'm1'"))
    assert await _pass(worker) == 0
    message = await queue.get("m1")
    assert message is not None
    epoch = worker._claimable(replace(message, lease_until=clock.now - 100), clock.now)
    assert epoch == 2
    clock.now += 10 + 5 * 2
    assert await _pass(worker) == 1
    assert len(sink.messages) == 1 and worker.counters["takeovers"] == 1
