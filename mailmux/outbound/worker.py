"""The node's outbound delivery loop: leases, attempts, retries, bounces.

Ownership. Every queued message has one owner (node id) with a lease (`lease_until`) and an
epoch. The node that queued it owns it first. Before each attempt the owner renews the lease,
and keeps renewing it every `lease / 3` while the attempt runs; after an attempt the lease is
extended to `next_attempt + lease`, so an owner holds its deferred messages without writing
anything. Any other node may take a message over once its lease has expired, with epoch + 1 (a
node that restarts waits a lease plus RESTART_HOLD before touching older messages, so that
replication tells it first about takeovers that happened while it was down);
the other nodes are ranked per message (a hash of message id and node id) and the k-th waits k
half-leases more, so normally exactly one node takes over, a few seconds after the owner died
or hung. Should two claim at once, the replicas agree on the larger (epoch, node) and the loser
stops before its next SMTP transaction. A crash between the remote server's 250 and the attempt
record means the next owner sends again: delivery is at least once, as with every MTA.

Retries follow the configured intervals (RFC 5321 4.5.4.1); a 4xx or an unreachable host is
retried, a 5xx fails that recipient, and when `lifetime` is over every pending recipient fails.
Failed recipients are reported in one DSN to the sender's INBOX (never for `MAIL FROM:<>`), and a
delay warning can be sent once after `delay_warning`. The clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailmux.backend.config import BackendConfig
from mailmux.backend.errors import BackendError, UserNotFound
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.metrics import set_outbound_queue_source
from mailmux.outbound import dsn
from mailmux.outbound.client import Deliverer, Outcome
from mailmux.outbound.dkim_sign import Signer
from mailmux.outbound.queue import OutboundQueue, QueuedMessage
from mailmux.outbound.routes import RouteError, Router, destination

log = logging.getLogger(__name__)

INTERNAL_HEADERS = (b"x-mailmux-guid",)  # the pool's own stamps: not for the outside world


def strip_internal_headers(message: bytes) -> bytes:
    """The message without the pool's internal header fields (continuation lines included)."""
    head, sep, rest = message.partition(b"\r\n\r\n")
    if not sep:
        return message
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if dropping and line[:1] in (b" ", b"\t"):
            continue
        dropping = line.split(b":", 1)[0].strip().lower() in INTERNAL_HEADERS
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + rest


@dataclass
class _Lease:
    """This node's view of its lease during one attempt."""

    until: float
    lost: bool = False


DSN_RETRY = 60.0
# Extra wait after a restart before touching messages queued earlier: peers redial a node that
# was down with a backoff of up to 5 s (replication/peers.py) before they push what it missed.
RESTART_HOLD = 10.0  # seconds before another try at a report the sender's INBOX refused


class OutboundWorker:
    def __init__(self, config: BackendConfig, store: SqliteStore, meter: LoadMeter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.oconfig = config.outbound
        self.store = store
        self.meter = meter
        self.clock = clock
        self.queue = OutboundQueue(store)
        self.node_id = config.node_id
        self.nodes = sorted({config.node_id, *(p[0] for p in config.replication.peers)})
        self.router = Router(self.oconfig)
        self.deliverer = Deliverer(self.oconfig, self.oconfig.helo_name or socket.getfqdn())
        self.signer = Signer(self.oconfig.dkim)
        self.unconfirmed: set[str] = set()  # queued here, copies not yet acknowledged
        self.active: dict[str, asyncio.Task[None]] = {}
        self.size = 0
        self.oldest_age = 0.0
        self.counters = {"sent": 0, "failed": 0, "deferred": 0, "takeovers": 0, "dsn": 0}
        self.started_at = clock()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._unregister_metrics: Callable[[], None] | None = None

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.meter is not None:
            self.meter.outbound_backlog = lambda: self.size
            self.meter.outbound_details = self.details
        # Read on the metrics thread: plain attributes only.
        self._unregister_metrics = set_outbound_queue_source(lambda: (self.size, self.oldest_age))
        self._loop_task = asyncio.create_task(self._run(), name="outbound-worker")

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self.active.values()) if t is not None]
        for task in tasks:
            task.cancel()
        # Interrupted attempts are not recorded: their leases expire and they run again.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        if self._unregister_metrics is not None:
            self._unregister_metrics()
            self._unregister_metrics = None

    def details(self) -> dict[str, float]:
        return {"outbound.queued": float(self.size), "outbound.oldest_s": round(self.oldest_age, 1),
                "outbound.active": float(len(self.active)),
                **{f"outbound.{k}": float(v) for k, v in self.counters.items()}}

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("outbound: queue pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.oconfig.poll_interval):
                    await self._wake.wait()

    # intake ---------------------------------------------------------------------------------

    async def submit(self, message_id: str, sender: str, recipients: list[str],
                     body: bytes) -> bool:
        """Queue on W nodes (raises Unavailable otherwise); False for a replayed submission."""
        signed = self.signer.sign(sender, strip_internal_headers(body))
        self.unconfirmed.add(message_id)
        try:
            queued = await self.queue.enqueue(message_id, sender, recipients, signed,
                                              self.clock(), self.oconfig.lease)
        finally:
            self.unconfirmed.discard(message_id)
        self._wake.set()
        return queued

    # one pass -------------------------------------------------------------------------------

    async def run_once(self) -> list[asyncio.Task[None]]:
        """Claim what is due and start delivering it; returns the started attempts."""
        now = self.clock()
        self.size, self.oldest_age = await self.queue.stats(now)
        free = self.oconfig.max_concurrent - len(self.active)
        started = []
        for message in await self.queue.due(now, 0.0, max(free, 0) * 4):
            if len(self.active) >= self.oconfig.max_concurrent:
                break
            # (A retried refused submission is queued as "GUID.n": same unconfirmed GUID.)
            if message.id in self.active or message.id.split(".")[0] in self.unconfirmed:
                continue
            epoch = self._claimable(message, now)
            if epoch is None:
                continue
            if not await self.queue.claim(message.id, epoch, now + self.oconfig.lease):
                continue
            if message.owner != self.node_id:
                self.counters["takeovers"] += 1
                log.info("outbound: took over %s from %s (epoch %d)", message.id,
                         message.owner, epoch)
            fresh = await self.queue.get(message.id)
            assert fresh is not None
            task = asyncio.create_task(self._attempt(fresh), name=f"outbound-{message.id}")
            self.active[message.id] = task
            task.add_done_callback(self._finished_callback(message.id))
            started.append(task)
        return started

    def _finished_callback(self, message_id: str) -> Callable[[asyncio.Task[None]], None]:
        def finished(task: asyncio.Task[None]) -> None:
            self.active.pop(message_id, None)
            self._wake.set()
            if not task.cancelled() and task.exception() is not None:
                log.error("outbound: attempt on %s failed", message_id,
                          exc_info=task.exception())

        return finished

    def _claimable(self, message: QueuedMessage, now: float) -> int | None:
        """The epoch to claim with, or None when this node should leave the message alone."""
        if (message.created < self.started_at
                and now < self.started_at + self.oconfig.lease + RESTART_HOLD):
            # Just restarted: what this node believes about older messages may be stale (another
            # node may have taken them over, even finished them, while it was down). Peers push
            # their changes once they have redialled us: replication catches up first.
            return None
        if message.owner == self.node_id and now < message.lease_until:
            return message.epoch
        # Our own expired lease counts as an orphan too (we were down or hung): we come last.
        others = sorted((n for n in self.nodes if n != message.owner),
                        key=lambda n: hashlib.sha256(f"{message.id}\0{n}".encode()).digest())
        rank = others.index(self.node_id) if self.node_id in others else len(others)
        if now < message.lease_until + rank * self.oconfig.lease / 2:
            return None
        return message.epoch + 1

    # an attempt -----------------------------------------------------------------------------

    async def _attempt(self, message: QueuedMessage) -> None:
        lease = _Lease(message.lease_until)
        renewer = asyncio.create_task(self._renew(message, lease))
        try:
            now = self.clock()
            expired = now >= message.created + self.oconfig.lifetime
            outcomes = {} if expired else await self._send(message, lease)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        await self._record(message, outcomes, expired)

    async def _renew(self, message: QueuedMessage, lease: _Lease) -> None:
        while True:
            await asyncio.sleep(self.oconfig.lease / 3)  # a period, not synchronisation
            if self.clock() >= lease.until:
                # We were stopped or starved past our own lease: another node may own the
                # message now. Renewing would only hide that; the attempt must stop.
                lease.lost = True
                return
            until = self.clock() + self.oconfig.lease
            if not await self.queue.claim(message.id, message.epoch, until):
                lease.lost = True
                return
            lease.until = until

    async def _may_send(self, message: QueuedMessage, lease: _Lease) -> bool:
        """Right before DATA: is the lease still ours, by our clock and by our replica?"""
        if lease.lost or self.clock() >= lease.until:
            log.warning("outbound: lease of %s expired mid-attempt; not sending", message.id)
            return False
        return await self._still_owner(message)

    async def _still_owner(self, message: QueuedMessage) -> bool:
        current = await self.queue.get(message.id)
        return (current is not None and current.state == "queued"
                and current.owner == self.node_id and current.epoch == message.epoch)

    async def _send(self, message: QueuedMessage, lease: _Lease) -> dict[str, Outcome]:
        body = await self.queue.body(message.id)
        if body is None:
            return {}
        groups: dict[str, list[str]] = {}
        for rcpt in message.pending:
            groups.setdefault(destination(self.oconfig, rcpt), []).append(rcpt)
        results = await asyncio.gather(
            *(self._send_group(message, lease, key, rcpts, body)
              for key, rcpts in groups.items()))
        return {r: o for found in results for r, o in found.items()}

    async def _send_group(self, message: QueuedMessage, lease: _Lease, key: str,
                          rcpts: list[str], body: bytes) -> dict[str, Outcome]:
        try:
            route = await self.router.route(key)
        except RouteError as exc:
            state = "failed" if exc.permanent else "pending"
            return {r: Outcome(state, int(exc.reply[:3]), exc.reply) for r in rcpts}
        if not await self._still_owner(message):
            log.info("outbound: lost the lease of %s; leaving it to its new owner", message.id)
            return {}
        return await self.deliverer.send(route, message.sender, rcpts, body,
                                         lambda: self._may_send(message, lease))

    async def _record(self, message: QueuedMessage, outcomes: dict[str, Outcome],
                      expired: bool) -> None:
        if not await self._still_owner(message):
            return  # another node took over: its record counts, not ours
        now = self.clock()
        results: dict[str, dict[str, Any]] = {r: o.as_json() for r, o in outcomes.items()}
        if expired:
            for rcpt in message.pending:
                last = message.recipients[rcpt].get("text") or message.last_error
                results[rcpt] = {"state": "failed", "code": 421, "host": "",
                                 "text": f"421 4.4.7 delivery time expired; last answer: {last}"}
        pending = [r for r in message.pending if results.get(r, {}).get("state", "pending")
                   == "pending"]
        for o in outcomes.values():
            self.counters[{"sent": "sent", "failed": "failed"}.get(o.state, "deferred")] += 1
        # Never later than the end of the lifetime: expiry is noticed (and bounced) on time.
        next_attempt = min(now + self.oconfig.retry_delay(message.attempts + 1),
                           max(now, message.created + self.oconfig.lifetime))
        if not pending:
            next_attempt = now
        errors = [o.text for o in outcomes.values() if o.state != "sent"]
        await self.queue.record_attempt(message, results, next_attempt,
                                        next_attempt + self.oconfig.lease,
                                        errors[0] if errors else "")
        summary = ", ".join(f"{r} {o.state} ({o.text[:80]})" for r, o in outcomes.items())
        log.info("outbound: %s attempt %d: %s", message.id, message.attempts + 1,
                 summary or ("expired" if expired else "nothing sent"))
        fresh = await self.queue.get(message.id)
        if fresh is not None:
            await self._report(fresh, now)

    # reports --------------------------------------------------------------------------------

    async def _report(self, message: QueuedMessage, now: float) -> None:
        failed = message.unreported
        if failed:
            if not await self._send_dsn(message, failed, "failed"):
                await self.queue.record_attempt(message, {}, now + DSN_RETRY,
                                                now + DSN_RETRY + self.oconfig.lease,
                                                message.last_error)
                return
            await self.queue.mark(message, {r: {**message.recipients[r], "state": "reported"}
                                            for r in failed})
            message = await self.queue.get(message.id) or message
        if not message.pending:
            await self.queue.finish(message.id, "delivered" if not failed else "bounced")
            return
        warn_after = self.oconfig.delay_warning
        due = warn_after is not None and now - message.created >= warn_after
        if due and not message.warned and await self._send_dsn(message, message.pending,
                                                                "delayed"):
            await self.queue.mark(message, {}, warned=True)

    async def _send_dsn(self, message: QueuedMessage, rcpts: list[str], action: str) -> bool:
        """True once the report is in the sender's INBOX, or when none is owed."""
        if not message.sender:
            log.info("outbound: %s to %s %s; no report for a null sender", message.id,
                     ", ".join(rcpts), action)
            return True
        reports = []
        for r in rcpts:
            info = message.recipients[r]
            text = str(info.get("text") or message.last_error or "no answer")
            reports.append(dsn.RecipientReport(r, action, dsn.status_of(text, action), text,
                                               str(info.get("host", ""))))
        original = await self.queue.body(message.id) or b""
        report = dsn.build(reporting_mta=self.oconfig.helo_name or self.node_id,
                           sender=message.sender, message_id=message.id,
                           arrival=message.created, reports=reports, original=original)
        guid = dsn.report_id(message.id, action, rcpts)
        try:
            await self.store.deliver([message.sender], report, guid)
        except UserNotFound:
            log.warning("outbound: %s: sender %s is not a user here; report dropped",
                        message.id, message.sender)
            return True
        except BackendError as exc:
            log.warning("outbound: %s: report to %s not stored yet: %s", message.id,
                        message.sender, exc)
            return False
        self.counters["dsn"] += 1
        log.info("outbound: %s: %s report for %s delivered to %s", message.id, action,
                 ", ".join(rcpts), message.sender)
        return True
