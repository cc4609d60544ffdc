"""Replication between backend nodes: the asyncio shell around the peer protocol and the store.

Every node listens on `replication.listen` and dials every configured peer. A dialled link
ships: it asks the peer which position it holds per origin, sends the change records beyond
(with the bodies they need) in batches, and the peer applies each batch in one transaction and
answers with its new positions — that answer is the acknowledgement. The same exchange is the
anti-entropy pass: a node that was down, or whose disk was wiped, reports old (or no) positions
and receives everything it lacks, from any peer, since every node keeps every origin's history.

`immediate` mode ships as soon as a change commits; `batch` mode waits for the daily window or a
backlog threshold. Either way a delivery that needs W copies (importance, `copies.py`) is shipped
at once and acknowledged to its sender only after W-1 peers have acknowledged it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailmux.backend.config import BackendConfig
from mailmux.backend.errors import Unavailable
from mailmux.backend.load import LoadMeter
from mailmux.backend.login_failures import PoolLoginFailures
from mailmux.backend.store.apply import apply_records
from mailmux.backend.store.interface import ChangeRecord
from mailmux.backend.store.sqlite import SqliteStore, index_entries_before_commit
from mailmux.backend.store.writer import Tx
from mailmux.protocol.control.errors import ControlDecodeError
from mailmux.protocol.peer.session import (
    MAX_FRAME,
    FrameDecoder,
    PeerAuthError,
    Sealer,
    check_hello,
    check_welcome,
    hello,
    plain,
    welcome,
)
from mailmux.replication import antientropy, outgoing
from mailmux.replication.barrier import ReadBarrier
from mailmux.replication.home import HomeLeases
from mailmux.replication.importance import copies_required
from mailmux.replication.pipeline import MAX_IN_FLIGHT, PipelineClosed, Requests, Responder
from mailmux.replication.routing import HomeRouter
from mailmux.replication.window import BatchWindow, local_now
from mailmux.tls import server_context

log = logging.getLogger(__name__)

Address = tuple[str, int]
BATCH_RECORDS = 500
BATCH_BODY_BYTES = 8 * 1024 * 1024
IDLE_RECHECK = 1.0
RESPONSIVE = 3.0  # a peer not heard from for longer does not count for the precheck
FIRST_BACKOFF = 0.2  # reconnect backoff, doubling up to MAX_BACKOFF
MAX_BACKOFF = 5.0
READ_SIZE = 256 * 1024
ACK_PERSIST_INTERVAL = 1.0
BODY_KINDS = ("message.add", "outbound.enqueue")  # records whose payload names a body by hash
PREAUTH_MAX_FRAME = 16 * 1024
MAX_PREAUTH_CONNECTIONS = 64  # peer connections still in their handshake


class LinkClosed(Exception):
    pass


class Channel:
    """One authenticated peer connection: sealed JSON messages in both directions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # Until the peer has proven it holds the secret it gets small frames only: a stranger
        # must not make us buffer MAX_FRAME bytes.
        self.decoder = FrameDecoder(PREAUTH_MAX_FRAME)
        self.sealer: Sealer | None = None

    async def _frame(self) -> bytes:
        while True:
            try:
                data = self.decoder.next_frame()
            except ControlDecodeError as exc:
                raise LinkClosed(str(exc)) from exc
            if data is not None:
                return data
            chunk = await self.reader.read(READ_SIZE)
            if not chunk:
                raise LinkClosed("peer closed the connection")
            self.decoder.receive_data(chunk)

    async def receive_plain(self) -> dict[str, Any]:
        try:
            message = json.loads(await self._frame())
        except (ValueError, RecursionError) as exc:
            raise PeerAuthError(f"handshake is not JSON: {str(exc)[:80]}") from None
        if not isinstance(message, dict):
            raise PeerAuthError("handshake is not an object")
        return message

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        assert self.sealer is not None
        self.decoder.max_frame = MAX_FRAME
        try:
            async with asyncio.timeout(timeout):
                frame = await self._frame()
        except TimeoutError:
            # A hung peer (SIGSTOP, stuck disk) keeps its TCP link open: without a deadline
            # the link would wait forever and never notice.
            raise LinkClosed(f"no answer within {timeout:.1f}s") from None
        return self.sealer.open(frame)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.sealer is not None
        self.writer.write(self.sealer.seal(message))
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _records_json(records: list[ChangeRecord]) -> list[list[Any]]:
    return [[r.origin, r.seq, r.hlc, r.kind, r.payload] for r in records]


def _records_from(raw: list[list[Any]]) -> list[ChangeRecord]:
    return [ChangeRecord(str(o), int(s), int(h), str(k), dict(p)) for o, s, h, k, p in raw]


@dataclass
class PeerState:
    node_id: str
    address: Address
    connected: bool = False
    acked: dict[str, int] = field(default_factory=dict)  # their positions, per origin
    last_ack: float | None = None  # monotonic time of the last acknowledgement
    shipped: int = 0
    last_error: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    persisted: float = float("-inf")  # when the acknowledged position was last saved
    rounds: int = 0  # shipping decisions taken (tests watch it instead of sleeping)
    digested: float = float("-inf")  # when digests were last compared
    state_digested: float = float("-inf")  # when the state besides messages was compared
    repaired: int = 0  # mailboxes found different and repaired by digest comparison
    keeping_up: bool = False  # the last read found few records: read the next on the loop
    # Set when the peer dialled us while our link to it was down: it is back (say, restarted),
    # so the dialer retries now instead of at the end of its backoff, which by then may be
    # seconds, and a new home there would refuse changes for want of a linked peer.
    redial: asyncio.Event = field(default_factory=asyncio.Event)


class Replicator:
    def __init__(self, config: BackendConfig, store: SqliteStore, meter: LoadMeter,
                 clock: Callable[[], datetime] = local_now) -> None:
        self.config = config
        self.rconfig = config.replication
        self.store = store
        self.meter = meter
        self.clock = clock
        self.peers = {node: PeerState(node, (host, port))
                      for node, host, port in self.rconfig.peers}
        self.window = (BatchWindow(*self.rconfig.batch_window, self.rconfig.batch_backlog)
                       if self.rconfig.batch_window else None)
        self._urgent = 0  # deliveries waiting for copies: ship even outside the batch window
        self._acks = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._local_seq = 0
        self._answer_timeout = 2 * self.rconfig.copy_timeout
        self._handshaking = 0
        self.homes: HomeLeases | None = None
        self.barrier: ReadBarrier | None = None
        self.router = HomeRouter(self)
        # Failed logins shared with the peers; the node replaces it with the one its IMAP
        # server uses.
        self.failures = PoolLoginFailures(config.lockout_failures, config.lockout_time)
        self._origins: set[str] = set()  # origins of the records held here
        # TLS on peer links whenever the node has a certificate (DESIGN: off loopback, always).
        # Peers authenticate each other with the pool secret; TLS adds confidentiality, and the
        # dialer checks the peer's certificate against the node's own (a pool-wide certificate
        # or CA bundle).
        self._server_tls = server_context(config.tls_cert, config.tls_key)
        self._client_tls: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            self._client_tls = ssl.create_default_context(cafile=str(config.tls_cert))
            self._client_tls.check_hostname = False

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> list[Address]:
        assert self.rconfig.listen is not None
        self._local_seq = await self.store.local_seq()
        self._origins = {self.store.origin, *await self.store.positions()}
        self._server = await asyncio.start_server(self._accept, *self.rconfig.listen,
                                                  ssl=self._server_tls)
        bound: Address = self._server.sockets[0].getsockname()[:2]
        self.store.commit_hooks.append(self._committed)
        self.store.copies_hook = self.ensure_copies
        self.store.precheck_hook = self.precheck
        pool = sorted({self.config.node_id, *self.peers})
        # Boards are written by many users at once and have no home: their UIDs stay in this
        # node's residue class. A user's UIDs are given out by the user's home, in order.
        self.store.uid_slot = (pool.index(self.config.node_id), len(pool))
        homes = HomeLeases(self)
        await homes.load()  # before any lease request is answered
        self.homes = homes
        self.store.home_hook = self.homes.fence
        self.store.home_epoch = self.homes.epoch
        self.store.home_now = self.homes.holds
        self.store.interest_hook = self.homes.touch
        self.store.route_hook = self.router.deliver
        self._spawn(self.homes.renew_forever())
        self.barrier = ReadBarrier(self)
        self.store.commit_hooks.append(self.barrier.committed)
        self.store.read_barrier_hook = self.barrier.wait
        self.meter.replication_backlog = self.backlog
        self.meter.replication_details = self.details
        for peer in self.peers.values():
            self._spawn(self._ship_forever(peer))
        log.info("replication listening on %s:%d, %d peer(s), mode %s", *bound,
                 len(self.peers), self.rconfig.mode)
        return [bound]

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.store.copies_hook = None
        self.store.precheck_hook = None
        self.store.home_hook = None
        self.store.interest_hook = None
        self.store.read_barrier_hook = None
        self.store.route_hook = None
        if self._committed in self.store.commit_hooks:
            self.store.commit_hooks.remove(self._committed)
        if self.barrier is not None:
            if self.barrier.committed in self.store.commit_hooks:
                self.store.commit_hooks.remove(self.barrier.committed)
            await self.barrier.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.homes is not None:
            await self.homes.close()
        await self.router.close()

    def _committed(self) -> None:
        self._wake_all()

    def wake_all(self) -> None:
        """Something besides a change is owed to the peers (failed-login counts)."""
        self._wake_all()

    def _wake_all(self) -> None:
        for peer in self.peers.values():
            peer.wake.set()

    # copies by importance ------------------------------------------------------------------

    def live_peers(self) -> int:
        return sum(1 for p in self.peers.values() if p.connected)

    def _needed(self, body: bytes | None) -> int:
        """Extra copies (peers) a change needs: by importance for a message, else normal."""
        wanted = copies_required(body or b"", self.rconfig.copies, 1 + self.live_peers())
        return min(wanted, 1 + len(self.peers)) - 1

    def responsive_peers(self) -> int:
        """Peers linked and heard from lately (a hung peer keeps its TCP link)."""
        now = time.monotonic()
        return sum(1 for p in self.peers.values() if self._responsive(p, now))

    def _responsive(self, peer: PeerState, now: float) -> bool:
        limit = max(RESPONSIVE, self.rconfig.copy_timeout)
        return peer.connected and peer.last_ack is not None and now - peer.last_ack <= limit

    def precheck(self, body: bytes | None) -> None:
        needed = self._needed(body)
        if needed > 0 and not self.rconfig.degrade and self.responsive_peers() < needed:
            raise Unavailable("not enough mail servers reachable to make this change safely; "
                              "try again later")

    async def ensure_copies(self, body: bytes | None, seq: int) -> None:
        needed = self._needed(body)
        if needed <= 0:
            return
        origin = self.store.origin
        self._urgent += 1
        self._local_seq = max(self._local_seq, seq)
        self._wake_all()
        try:
            async with asyncio.timeout(self.rconfig.copy_timeout), self._acks:
                await self._acks.wait_for(lambda: sum(
                    1 for p in self.peers.values() if p.acked.get(origin, 0) >= seq) >= needed)
        except TimeoutError:
            have = sum(1 for p in self.peers.values() if p.acked.get(origin, 0) >= seq)
            if self.rconfig.degrade:
                log.warning("replication: only %d of %d extra copies of change %d; degrading "
                            "as configured", have, needed, seq)
                return
            log.warning("replication: only %d of %d extra copies of change %d within %.1fs; "
                        "refusing", have, needed, seq, self.rconfig.copy_timeout)
            raise Unavailable("not enough mail servers reachable to store the message safely; "
                              "try again later") from None
        finally:
            self._urgent -= 1

    # status ---------------------------------------------------------------------------------

    def backlog(self) -> int:
        origin = self.store.origin
        return sum(max(0, self._local_seq - p.acked.get(origin, 0)) for p in self.peers.values())

    def details(self) -> dict[str, float]:
        """Per-peer backlog and lag for the node's LOAD answer."""
        origin = self.store.origin
        now = time.monotonic()
        out: dict[str, float] = {}
        for p in self.peers.values():
            backlog = max(0, self._local_seq - p.acked.get(origin, 0))
            out[f"peer.{p.node_id}.backlog"] = float(backlog)
            out[f"peer.{p.node_id}.connected"] = 1.0 if p.connected else 0.0
            # Responsive peers are the ones a change can count on for its copies.
            out[f"peer.{p.node_id}.responsive"] = 1.0 if self._responsive(p, now) else 0.0
            # Lag: how long the oldest unacknowledged change has waited (0 when caught up).
            out[f"peer.{p.node_id}.lag_s"] = (
                0.0 if backlog == 0 or p.last_ack is None else round(now - p.last_ack, 3))
        return out

    def status(self) -> dict[str, Any]:
        origin = self.store.origin
        now = time.monotonic()
        return {
            "node": self.config.node_id, "origin": origin, "mode": self.rconfig.mode,
            "local_seq": self._local_seq,
            "peers": {
                p.node_id: {
                    "address": f"{p.address[0]}:{p.address[1]}", "connected": p.connected,
                    "acked": p.acked.get(origin, 0),
                    "backlog": max(0, self._local_seq - p.acked.get(origin, 0)),
                    "lag_seconds": None if p.last_ack is None else round(now - p.last_ack, 3),
                    "shipped": p.shipped, "last_error": p.last_error,
                }
                for p in self.peers.values()
            },
        }

    async def _record_ack(self, peer: PeerState, positions: dict[str, int]) -> None:
        async with self._acks:
            peer.acked = positions
            peer.last_ack = time.monotonic()
            self._acks.notify_all()
        # For `mailmux-backend replication status`; at most once a second per peer, so that
        # acknowledgements do not cost an fsync each.
        if time.monotonic() - peer.persisted >= ACK_PERSIST_INTERVAL:
            peer.persisted = time.monotonic()
            await self.store.set_meta(f"ack:{peer.node_id}", json.dumps(
                {"acked": positions.get(self.store.origin, 0), "at": time.time(),
                 "local": self._local_seq, "origin": self.store.origin}))

    # shipping (dialer side) ------------------------------------------------------------------

    async def _ship_forever(self, peer: PeerState) -> None:
        backoff = FIRST_BACKOFF
        while True:
            peer.redial.clear()
            try:
                channel = await self._dial(peer)
            except (OSError, TimeoutError, PeerAuthError, LinkClosed) as exc:
                peer.last_error = str(exc) or type(exc).__name__
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):  # reconnect backoff, cut short
                        await peer.redial.wait()  # when the peer dials us
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = FIRST_BACKOFF
            peer.connected = True
            log.info("replication: linked to %s at %s:%d", peer.node_id, *peer.address)
            try:
                await self._ship(peer, channel)
            except (OSError, PeerAuthError, LinkClosed, PipelineClosed, ValueError,
                    KeyError) as exc:
                peer.last_error = str(exc) or type(exc).__name__
                log.warning("replication: link to %s lost: %s", peer.node_id, peer.last_error)
            finally:
                peer.connected = False
                async with self._acks:
                    self._acks.notify_all()
                await channel.close()

    async def _dial(self, peer: PeerState) -> Channel:
        async with asyncio.timeout(self.rconfig.copy_timeout):
            reader, writer = await asyncio.open_connection(*peer.address, ssl=self._client_tls)
            channel = Channel(reader, writer)
            try:
                nonce = os.urandom(16)
                secret = self.config.pool_secret
                writer.write(plain(hello(secret, self.config.node_id, nonce, time.time())))
                node, their_nonce = check_welcome(secret, await channel.receive_plain(), nonce)
                if node != peer.node_id:
                    raise PeerAuthError(f"{peer.address} says it is {node}, not {peer.node_id}")
                channel.sealer = Sealer.for_session(secret, nonce, their_nonce, dialer=True)
            except BaseException:
                await channel.close()
                raise
        return channel

    def _may_ship(self, pending: bool) -> bool:
        if self._urgent or self.rconfig.mode != "batch" or self.window is None:
            return True
        return pending and self.window.may_ship(self.clock(), self.backlog())

    @staticmethod
    async def _ask(requests: Requests, message: dict[str, Any]) -> dict[str, Any]:
        reply = await requests.ask(message)
        if reply.get("t") != message.get("t"):
            raise LinkClosed(f"expected {message.get('t')!r}, got {reply.get('t')!r}")
        return reply

    async def _reconcile(self, peer: PeerState, requests: Requests,
                         linked: bool = False) -> None:
        peer.digested = now = time.monotonic()
        state = linked or now - peer.state_digested >= antientropy.STATE_INTERVAL
        if state:
            peer.state_digested = now
        repaired = await antientropy.reconcile(
            self.store, lambda m: self._ask(requests, m), peer.node_id, state)
        peer.repaired += repaired

    async def _ship(self, peer: PeerState, channel: Channel) -> None:
        requests = Requests(channel, self._answer_timeout)
        try:
            await self._ship_on(peer, requests)
        finally:
            await requests.close()

    async def _ship_on(self, peer: PeerState, requests: Requests) -> None:
        await self._record_ack(peer, await self._held_by_peer(requests))
        await self._reconcile(peer, requests, linked=True)
        # Batches go out as soon as changes commit, up to MAX_IN_FLIGHT unacknowledged
        # (pipeline.py): a change committed while a batch is on the wire does not wait for
        # that round trip, and batches arriving together share the peer's fsync.
        in_flight: deque[tuple[asyncio.Future[dict[str, Any]], int]] = deque()
        sent = dict(peer.acked)  # positions shipped, acknowledged or not
        while True:
            peer.wake.clear()
            await self._send_failures(peer, requests)
            while in_flight and in_flight[0][0].done():
                future, count = in_flight.popleft()
                await self._acknowledged(peer, future.result(), count)
            for origin, seq in peer.acked.items():
                sent[origin] = max(sent.get(origin, 0), seq)
            if len(in_flight) < MAX_IN_FLIGHT:
                records = await self._changes_for(peer, sent)
                peer.rounds += 1
                own = [r.seq for r in records if r.origin == self.store.origin]
                self._local_seq = max([self._local_seq, *own])
                if records and self._may_ship(True):
                    records, future = await self._send_batch(requests, records)
                    future.add_done_callback(lambda _: peer.wake.set())
                    in_flight.append((future, len(records)))
                    for record in records:
                        sent[record.origin] = max(sent.get(record.origin, 0), record.seq)
                    continue
            if in_flight:
                await peer.wake.wait()  # an acknowledgement, or a new change to ship
                continue
            try:
                async with asyncio.timeout(IDLE_RECHECK):
                    await peer.wake.wait()
            except TimeoutError:
                # Quiet for a while: ask again where the peer stands. This notices a dead
                # link (no TCP traffic would) and a peer that lost its data (positions drop),
                # which then gets everything again: the periodic anti-entropy pass.
                await self._record_ack(peer, await self._held_by_peer(requests))
                sent = dict(peer.acked)
                peer.keeping_up = False  # the next read also finds origins not known yet
                if time.monotonic() - peer.digested >= antientropy.DIGEST_INTERVAL:
                    await self._reconcile(peer, requests)

    async def _send_failures(self, peer: PeerState, requests: Requests) -> None:
        """Failed-login counts this node owes the peer (backend/login_failures.py)."""
        update = self.failures.take(peer.node_id)
        if not update:
            return
        try:
            await self._ask(requests, {"t": "failures", "users": update})
        except BaseException:
            self.failures.give_back(peer.node_id, update)
            raise

    async def _changes_for(self, peer: PeerState, sent: dict[str, int]) -> list[ChangeRecord]:
        """What to ship next: read on the event loop while the link keeps up (few records,
        origins known), in a worker thread when it has a backlog."""
        if peer.keeping_up:
            records = self.store._read_inline(
                lambda c: outgoing.records_after(c, self._origins, sent),
                statements=len(self._origins))
        else:
            records = await self.store.changes_after(sent, BATCH_RECORDS)
            self._origins.update(r.origin for r in records)
        peer.keeping_up = len(records) < outgoing.INLINE_RECORDS
        return records

    @staticmethod
    async def _held_by_peer(requests: Requests) -> dict[str, int]:
        reply = await requests.ask({"t": "positions"})
        if reply.get("t") != "ack":  # the answer to "positions" is an acknowledgement
            raise LinkClosed(f"expected ack, got {reply.get('t')!r}")
        return _positions(reply)

    async def _acknowledged(self, peer: PeerState, reply: dict[str, Any], count: int) -> None:
        if reply.get("t") != "ack":
            raise LinkClosed(f"expected ack, got {reply.get('t')!r}")
        peer.shipped += count
        # An acknowledgement names the positions of the origins in its batch (and others as
        # last known): it can only raise what the peer is known to hold.
        merged = dict(peer.acked)
        for origin, seq in _positions(reply).items():
            merged[origin] = max(merged.get(origin, 0), seq)
        await self._record_ack(peer, merged)
        log.debug("replication: %d change(s) to %s acknowledged", count, peer.node_id)

    async def _send_batch(self, requests: Requests, records: list[ChangeRecord]
                          ) -> tuple[list[ChangeRecord], asyncio.Future[dict[str, Any]]]:
        hashes = [str(r.payload["body"]) for r in records if r.kind in BODY_KINDS]
        bodies = self.store._read_inline(lambda c: outgoing.small_bodies(c, hashes),
                                         statements=len(set(hashes))) if hashes else {}
        if len(bodies) < len(set(hashes)):
            bodies |= await self.store.bodies_for([h for h in hashes if h not in bodies])
        size = 0
        for index, record in enumerate(records):
            if record.kind in BODY_KINDS:
                size += len(bodies.get(str(record.payload["body"]), b""))
            if size > BATCH_BODY_BYTES and index + 1 < len(records):
                records = records[: index + 1]  # keep batches (and memory) bounded
                keep = {str(r.payload["body"]) for r in records if r.kind in BODY_KINDS}
                bodies = {h: b for h, b in bodies.items() if h in keep}
                break
        future = await requests.send({
            "t": "batch", "records": _records_json(records),
            "bodies": {h: base64.b64encode(b).decode() for h, b in bodies.items()},
        })
        return records, future

    # receiving (listener side) ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        peer = writer.get_extra_info("peername")
        if self._handshaking >= MAX_PREAUTH_CONNECTIONS:
            log.warning("replication: refused connection from %s: %d handshakes in progress",
                        peer, self._handshaking)
            await channel.close()
            return
        try:
            secret = self.config.pool_secret
            self._handshaking += 1
            try:
                async with asyncio.timeout(self.rconfig.copy_timeout):
                    node, their_nonce = check_hello(secret, await channel.receive_plain(),
                                                    time.time())
            finally:
                self._handshaking -= 1
            nonce = os.urandom(16)
            writer.write(plain(welcome(secret, self.config.node_id, their_nonce, nonce)))
            channel.sealer = Sealer.for_session(secret, their_nonce, nonce, dialer=False)
            known = self.peers.get(node)
            if known is not None and not known.connected:
                known.redial.set()
            await self._serve(node, channel)
        except asyncio.CancelledError:
            return  # shutting down: the connection task ends here, quietly
        except PeerAuthError as exc:
            log.warning("replication: refused connection from %s: %s", peer, exc)
        except (OSError, LinkClosed, PipelineClosed, TimeoutError, ValueError,
                KeyError) as exc:
            log.info("replication: connection from %s ended: %s", peer, exc)
        finally:
            await channel.close()

    async def _serve(self, node: str, channel: Channel) -> None:
        responder = Responder(channel, channel.writer.close)
        inbound = _Inbound({self.store.origin, *await self.store.positions()})
        try:
            while True:
                message = await channel.receive()
                kind = message.get("t")
                if kind == "batch":
                    # Started at once, so batches that arrive together share a commit.
                    await responder.push(self._apply_batch(node, inbound, message))
                elif kind == "positions":
                    await responder.push_after(lambda: self._positions_answer(inbound))
                elif kind == "failures":
                    await responder.push_after(
                        lambda m=message: self._failures_answer(node, m))  # type: ignore[misc]
                elif kind == "deliver":
                    # Delivery links carry nothing else (routing.py).
                    await responder.push_after(
                        lambda m=message: self.router.answer(m))  # type: ignore[misc]
                elif str(kind).startswith("lease."):
                    # Lease links carry nothing else, so their answers come in order.
                    await responder.push_after(
                        lambda m=message: self._lease_answer(m))  # type: ignore[misc]
                else:
                    await responder.push_after(
                        lambda m=message: self._digest_answer(m))  # type: ignore[misc]
        finally:
            await responder.close()

    async def _lease_answer(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.homes is None:
            raise LinkClosed("lease message before the home leases started")
        return await self.homes.answer(message)

    async def _failures_answer(self, node: str, message: dict[str, Any]) -> dict[str, Any]:
        users = message.get("users")
        self.failures.heard(node, users if isinstance(users, dict) else {})
        return {"t": "failures"}

    async def _digest_answer(self, message: dict[str, Any]) -> dict[str, Any]:
        answer = await antientropy.answer(self.store, message)
        if answer is None:
            raise LinkClosed(f"unexpected message {message.get('t')!r}")
        return answer

    async def _positions_answer(self, inbound: _Inbound) -> dict[str, Any]:
        held = await self.store.positions()
        inbound.origins.update(held)
        return {"t": "ack", "positions": held}

    async def _apply_batch(self, node: str, inbound: _Inbound,
                           message: dict[str, Any]) -> dict[str, Any]:
        # Batches of a link reach the writer in arrival order: each waits for the one before
        # it to be queued, while the parsing below (off the writer) overlaps.
        before, queued = inbound.queued, asyncio.get_running_loop().create_future()
        inbound.queued = queued
        try:
            return await self._apply_batch_in_turn(node, inbound, message, before, queued)
        except BaseException:
            inbound.broken = True
            raise
        finally:
            if not queued.done():
                queued.set_result(None)

    async def _apply_batch_in_turn(self, node: str, inbound: _Inbound, message: dict[str, Any],
                                   before: asyncio.Future[None] | None,
                                   queued: asyncio.Future[None]) -> dict[str, Any]:
        records = _records_from(message["records"])
        bodies = {h: base64.b64decode(b) for h, b in message["bodies"].items()}
        # A message's SEARCH index entry (a MIME parse) is made here, before the commit, as the
        # home makes its own: inside the job it would hold the peer's writer, and so every
        # acknowledgement waiting behind it, for the parse.
        added = {str(r.payload.get("body")) for r in records if r.kind == "message.add"}
        wanted = {h: b for h, b in bodies.items() if h in added}
        indexes = await index_entries_before_commit(wanted) if wanted else {}
        if before is not None:
            await before

        def job(tx: Tx) -> tuple[int, dict[str, int]]:
            # Batches of one link apply in order; after a failed one the rest must not, or
            # the positions (highest sequence held) would claim the records it lacked.
            if inbound.broken:
                raise LinkClosed("an earlier batch on this link failed")
            try:
                applied = apply_records(self.store, tx, records, bodies, indexes)
            except Exception:
                inbound.broken = True
                raise
            # The positions as of this commit (the writer is the only writer), read by
            # primary key per origin instead of a scan of the whole log.
            inbound.origins.update(r.origin for r in records)
            return applied, {origin: int(row[0]) for origin in inbound.origins if (row := (
                tx.conn.execute("SELECT max(seq) FROM changelog WHERE origin = ?",
                                (origin,)).fetchone())) and row[0] is not None}

        written = self.store._submit(job)
        queued.set_result(None)
        applied, held = await written
        if applied:
            log.info("replication: applied %d change(s) from %s", applied, node)
        self._origins.update(held)
        sender = self.peers.get(node)
        if sender is not None:
            # The sender holds what it sent: our link to it must not ship that back.
            for record in records:
                if record.seq > sender.acked.get(record.origin, 0):
                    sender.acked[record.origin] = record.seq
        return {"t": "ack", "positions": held}


@dataclass
class _Inbound:
    """What the listener knows about one incoming link."""

    origins: set[str]  # every origin this node holds records of
    broken: bool = False  # a batch failed: later batches of the link are refused
    queued: asyncio.Future[None] | None = None  # resolved once the last batch is queued


def _positions(reply: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in reply["positions"].items()}
