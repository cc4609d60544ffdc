"""The delivery worker in-process with an injected clock, against a real SMTP sink and a real
loopback DNS server (MX records), on a real SQLite store: retries, bounces, expiry."""

from __future__ import annotations

import asyncio
import email
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mailmux.backend.config import from_dict
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.outbound.worker import OutboundWorker
from tests.support.certs import self_signed
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
            meter: LoadMeter | None = None, **outbound: object) -> OutboundWorker:
    config = from_dict({
        "node_id": "a", "data_dir": "d", "domains": ["example.test"],
        "pool_secret": "secret-secret", "listen_imap": "127.0.0.1:0",
        "listen_smtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0",
        "outbound": {"mx_port": sink.port, "dns_servers": [f"127.0.0.1:{dns.address[1]}"],
                     "timeout": "10s", **outbound},
    })
    return OutboundWorker(config, store, meter, clock=clock)


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
    # The body went with the message, and the change log never held it.
    assert await store._read(lambda c: c.execute("SELECT count(*) FROM bodies").fetchone()) == (0,)
    log = await store._read(lambda c: c.execute("SELECT group_concat(payload) FROM changelog")
                            .fetchone()[0])
    assert "Subject" not in log and "body line" not in log
    assert await _pass(worker) == 0
    assert len(sink.messages) == 2
    assert "remote.test. MX" in dns.queries and "mx.remote.test. A" in dns.queries


async def test_4xx_is_retried_on_schedule(store: SqliteStore, sink: SmtpSink,
                                         dns: DnsServer) -> None:
    clock = Clock()
    sink.handler.scripted[REMOTE] = ["451 4.7.1 greylisted, come back later",
                                     "452 4.2.2 mailbox full"]
    meter = LoadMeter()
    worker = _worker(store, sink, dns, clock, meter, retry_intervals=["5m", "15m", "30m"])
    await worker.start()
    await worker.close()  # installs the meter's sources; the test drives passes itself
    idle_score = meter.score()
    await worker.submit("m1", SENDER, [REMOTE], _message())
    start = clock.now
    assert await _pass(worker) == 1
    clock.now = start + 60
    await worker.run_once()  # refreshes the queue figures
    # The delivery backlog is in the LOAD report and weighs on the load score.
    assert meter.snapshot()["outbound.queued"] == 1 and meter.snapshot()["outbound.oldest_s"] == 60
    assert meter.score() == pytest.approx(idle_score + 1 / 100)
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


@pytest.fixture
def tls_sink(tmp_path: Path) -> Iterator[tuple[SmtpSink, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with SmtpSink(tls_context=context, auth=("relay-user", "relay-pw")) as s:
        yield s, cert


async def test_smarthost_starttls_checks_the_certificate_and_authenticates(
    store: SqliteStore, tls_sink: tuple[SmtpSink, Path], dns: DnsServer, tmp_path: Path,
) -> None:
    sink, cert = tls_sink
    password = tmp_path / "relay.pw"
    password.write_text("relay-pw\n")
    relay = {"relay": f"127.0.0.1:{sink.port}", "relay_user": "relay-user",
             "relay_password_file": str(password)}
    # Certificate checks are on by default: a self-signed smarthost is not trusted...
    worker = _worker(store, sink, dns, Clock(), **relay)
    await worker.submit("m1", SENDER, [REMOTE], _message())
    assert await _pass(worker) == 1
    queued = await worker.queue.get("m1")
    assert queued is not None and queued.pending == [REMOTE]
    assert "CERTIFICATE_VERIFY_FAILED" in queued.last_error.upper().replace(" ", "_")
    assert sink.messages == []
    # ...until its CA is configured; then STARTTLS and AUTH, and the message goes.
    worker = _worker(store, sink, dns, Clock(), relay_ca_file=str(cert), **relay)
    await worker.queue.retry("m1", worker.clock(), 10)
    assert await _pass(worker) == 1
    [got] = sink.messages
    assert got.recipients == [REMOTE]


async def test_mailbox_cleanup_keeps_queued_bodies(store: SqliteStore, sink: SmtpSink,
                                                   dns: DnsServer) -> None:
    clock = Clock()
    sink.handler.scripted[REMOTE] = ["451 4.3.0 later"]
    worker = _worker(store, sink, dns, clock)
    await worker.submit("m1", SENDER, [REMOTE], _message("shared"))
    assert await _pass(worker) == 1
    # A mailbox message expunged: the store collects unreferenced bodies, not queued ones.
    [added] = await store.deliver([SENDER], b"Subject: local\r\n\r\nx\r\n", "g-local")
    await store.expunge(SENDER, added.mailbox_id, [added.uid])
    assert await worker.queue.body("m1") is not None
    clock.now += 300
    assert await _pass(worker) == 1
    [got] = sink.messages
    assert b"Subject: shared" in got.data


@pytest.fixture
def dns_fallbacks() -> Iterator[DnsServer]:
    with DnsServer({
        # The preferred MX refuses connections (nothing listens on 127.0.0.2): the next is tried.
        ("two.test", "MX"): ["10 dead.two.test.", "20 live.two.test."],
        ("dead.two.test", "A"): ["127.0.0.2"],
        ("live.two.test", "A"): ["127.0.0.1"],
        # No MX at all: the domain's own address is the implicit MX (RFC 5321 5.1).
        ("plain.test", "A"): ["127.0.0.1"],
        # Null MX (RFC 7505): the domain takes no mail.
        ("nomail.test", "MX"): ["0 ."],
    }) as server:
        yield server


async def test_mx_fallbacks_implicit_mx_null_mx_and_unknown_domain(
    store: SqliteStore, sink: SmtpSink, dns_fallbacks: DnsServer,
) -> None:
    worker = _worker(store, sink, dns_fallbacks, Clock())
    await worker.submit("m1", SENDER, ["a@two.test", "b@plain.test", "c@nomail.test",
                                       "d@unknown.test"], _message("fallbacks"))
    assert await _pass(worker) == 1
    assert sorted(r for m in sink.messages for r in m.recipients) == ["a@two.test",
                                                                      "b@plain.test"]
    queries = dns_fallbacks.queries
    assert "plain.test. MX" in queries and "plain.test. A" in queries
    assert "dead.two.test. A" in queries and "live.two.test. A" in queries
    [report] = await _inbox(store)
    text = report.decode()
    assert "Final-Recipient: rfc822; c@nomail.test" in text and "Status: 5.1.10" in text
    assert "Final-Recipient: rfc822; d@unknown.test" in text and "Status: 5.1.2" in text
    assert "a@two.test" not in text.split("original")[0]
