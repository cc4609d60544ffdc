"""The home node per user: the asyncio shell around `mailmux.protocol.lease`.

Only a user's home commits the user's changes, so UIDs and MODSEQs are given out by one node at a
time and the other replicas apply them verbatim (docs/consistency.md). The home is whoever holds
the user's lease, granted by a majority of the pool over the authenticated peer links (a lease
link per peer, beside the replication link, so that a lease round never waits behind a batch).

- A change for a user (`ensure`) first makes this node the home: a claim round at a higher epoch;
  if another node holds the lease it is asked to hand it over (`lease.yield`: it finishes its
  changes in flight for that user, then releases). A dead home's lease runs out at the
  acceptors within one lease period. No majority within the deadline → Unavailable, the
  minority refusal (unless `degrade` is set: then the node commits without a lease).
- A new home catches up before it commits: it learns the log positions of at least
  N - W + 1 nodes (N the pool, W the `normal` copy count; never fewer than a majority), taken
  after it won the lease: every grant carries the granter's positions, and the other nodes are
  asked (`lease.positions`). It then waits until it holds every record any of them held. An
  acknowledged change is on W nodes, and any N - W + 1 nodes include one of them, so the new
  home never reuses or goes below a UID or MODSEQ an acknowledged change used, whatever N and
  W. With fewer nodes answering it refuses changes (reads go on) until enough are back.
- After the copies of a change are made, the change is confirmed only if the lease it started
  under is still held (`Fence.valid`); otherwise it is undone (a deposed home is fenced).
- The lease is renewed while the user is in use here (a login, a change, a delivery within
  INTEREST seconds), and left to lapse otherwise.
- Epochs are durable: an acceptor writes every epoch it grants (fsync'd, `epochs.py`) before
  the grant leaves, and reloads them at start, so after any restart, of one node or of the
  whole pool, a new home's epoch is above every earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailmux.backend.errors import NoMajority, Unavailable
from mailmux.protocol.lease import Acceptor, LeaseAnswer, LeaseRelease, LeaseRequest, Proposer
from mailmux.protocol.peer.session import PeerAuthError
from mailmux.replication.epochs import EpochFile

if TYPE_CHECKING:
    from mailmux.replication.peers import Channel, PeerState, Replicator

log = logging.getLogger(__name__)

INTEREST = 60.0  # keep renewing this long after the user's last login/change here
MINORITY_AFTER = 0.5  # no majority answering for this long: refuse the change at once
RETRY = 0.05  # between claim rounds while another holder hands over or expires


@dataclass
class Fence:
    """The lease a change started under; `valid()` says whether it still holds."""

    leases: HomeLeases | None
    users: tuple[str, ...]
    epochs: dict[str, int] = field(default_factory=dict)

    async def confirm(self) -> bool:
        """Still the home of every user, in the same term? A lease that lapsed meanwhile (a
        slow renewal under load) is renewed in the same term if no other term began."""
        leases = self.leases
        if leases is None:
            return True
        for user, epoch in self.epochs.items():
            if leases.proposer.epoch(user) != epoch:
                return False
            if not leases.proposer.holds(user, time.monotonic()):
                await leases.renew_term(user)
            if not (leases.proposer.holds(user, time.monotonic())
                    and leases.proposer.epoch(user) == epoch):
                return False
        return True


class HomeLeases:
    def __init__(self, replicator: Replicator) -> None:
        config = replicator.config
        self.replicator = replicator
        self.node = config.node_id
        self.duration = config.replication.lease
        self.degrade = config.replication.degrade
        self.rpc_timeout = max(0.2, self.duration / 4)
        nodes = sorted({self.node, *replicator.peers})
        # Restarted: promise nothing for one period, since the promises made before are lost.
        self.acceptor = Acceptor(self.node, time.monotonic(), quiet=self.duration)
        self.proposer = Proposer(self.node, nodes, self.duration,
                                 config.replication.lease_margin)
        self.ready: dict[str, int] = {}  # user → the epoch this node has caught up for
        self.interest: dict[str, float] = {}
        self.inflight: Counter[str] = Counter()
        self._idle = asyncio.Condition()
        self._locks: dict[str, asyncio.Lock] = {}
        self._links: dict[str, Channel] = {}
        self._link_locks: dict[str, asyncio.Lock] = {}
        self.positions: Callable[[], Awaitable[dict[str, int]]] = replicator.store.positions
        self._lapsed: set[str] = set()  # users whose lapse was logged
        self._accepting: dict[str, asyncio.Lock] = {}  # one grant (and its write) at a time
        self.epoch_file = EpochFile(config.data_dir)
        self.claims = 0  # successful claim rounds (a new term here), for status and tests

    async def load(self) -> None:
        """The epochs granted before this start: never grant or claim below them."""
        terms = await asyncio.to_thread(self.epoch_file.load)
        self.acceptor.restore(terms)
        for user, (epoch, _holder) in terms.items():
            self.proposer.seen(user, epoch)
        if terms:
            log.info("home: %d saved lease epoch(s) restored", len(terms))

    async def _accept(self, request: LeaseRequest) -> LeaseAnswer:
        """The acceptor's answer, its epoch durable before a grant is sent."""
        lock = self._accepting.setdefault(request.user, asyncio.Lock())
        async with lock:
            answer = self.acceptor.on_request(request, time.monotonic())
            unsaved = self.acceptor.unsaved.get(request.user)
            if unsaved is None:
                return answer
            epoch, holder = unsaved
            try:
                await self.epoch_file.save(request.user, epoch, holder)
            except OSError as exc:
                # Not durable, so not granted: the promise kept here only holds others off.
                log.warning("home: cannot save epoch %d of %s: %s", epoch, request.user, exc)
                return dataclasses.replace(answer, granted=False)
            self.acceptor.saved(request.user, epoch, holder)
            return answer

    # answers for WHO and status ----------------------------------------------------------------

    def holder(self, user: str) -> tuple[str, int] | None:
        """(home, epoch) as this node knows it: itself when it holds, else its promise."""
        user = user.lower()
        now = time.monotonic()
        if self.proposer.holds(user, now):
            return self.node, self.proposer.epoch(user)
        return self.acceptor.holder(user, now)

    def touch(self, user: str) -> None:
        """The user is in use here (login, delivery): claim now so that changes need not wait."""
        user = user.lower()
        fresh = user not in self.interest
        self.interest[user] = time.monotonic()
        if fresh or not self.proposer.holds(user, time.monotonic()):
            self.replicator._spawn(self._claim_quietly(user))

    async def _claim_quietly(self, user: str) -> None:
        """One round, no waiting: if another node is the home, it stays the home."""
        lock = self._locks.setdefault(user, asyncio.Lock())
        if lock.locked() or self.proposer.holds(user, time.monotonic()):
            return
        async with lock:
            granted, _ = await self._round(user)
            if self.proposer.holds(user, time.monotonic()):
                await self._catch_up(user, granted, time.monotonic() + self.duration)

    def catch_up_quorum(self) -> int:
        """Nodes whose positions a new home must learn: any N - W + 1 nodes include one of the
        W holding an acknowledged change (W = `normal`; a majority at least, the granters).
        W = 1 gives that up (the one copy may be on a dead home): a majority, or no home
        could ever be made while any node is down."""
        pool, copies = len(self.proposer.nodes), self.replicator.rconfig.copies.normal
        if copies < 2:
            return self.proposer.majority
        return min(pool, max(self.proposer.majority, pool - copies + 1))

    # the commit path -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def fence(self, users: Sequence[str]) -> AsyncIterator[Fence]:
        """Hold every user's lease for the length of one change (sorted: no lock cycles)."""
        names = tuple(sorted({u.lower() for u in users}))
        fence = Fence(self, names)
        for user in names:
            self.inflight[user] += 1
        try:
            for user in names:
                self.interest[user] = time.monotonic()
                epoch = await self._acquire(user)
                if epoch is None:
                    fence.epochs.clear()  # degraded: committing without a lease, by config
                    fence.leases = None
                    break
                fence.epochs[user] = epoch
            yield fence
        finally:
            async with self._idle:
                for user in names:
                    self.inflight[user] -= 1
                    if self.inflight[user] <= 0:
                        del self.inflight[user]
                self._idle.notify_all()

    def epoch(self, user: str) -> int:
        return self.proposer.epoch(user.lower())

    def holds(self, user: str) -> bool:
        return self.proposer.holds(user.lower(), time.monotonic())

    async def _acquire(self, user: str) -> int | None:
        now = time.monotonic()
        if self.proposer.holds(user, now) and self.ready.get(user) == self.proposer.epoch(user):
            return self.proposer.epoch(user)
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            return await self._acquire_locked(user)

    async def _acquire_locked(self, user: str) -> int | None:
        # Long enough for a dead home's promises to run out at the acceptors, and a round more.
        deadline = time.monotonic() + 2 * self.duration + 1.0
        cut_off_since: float | None = None  # no majority even answering, since then
        while True:
            now = time.monotonic()
            if not self.proposer.holds(user, now):
                positions, answered = await self._round(user)
                if self.proposer.holds(user, time.monotonic()):
                    await self._catch_up(user, positions, deadline)
                if answered >= self.proposer.majority:
                    cut_off_since = None
                elif cut_off_since is None:
                    cut_off_since = now
                elif time.monotonic() - cut_off_since >= MINORITY_AFTER:
                    deadline = time.monotonic()  # a minority: refuse now, not in seconds
            epoch = self.proposer.epoch(user)
            if self.proposer.holds(user, time.monotonic()) and self.ready.get(user) != epoch:
                # Won earlier (at login, or a catch-up that ran out of time): try again now.
                await self._catch_up(user, {}, deadline)
            if self.proposer.holds(user, time.monotonic()):
                if self.ready.get(user) == epoch:
                    return epoch
                raise Unavailable("this server is still catching up; try again later")
            hint = self.proposer.hint(user, time.monotonic())
            if hint is not None and hint[0] != self.node:
                await self._ask_to_yield(hint[0], user)
            if time.monotonic() >= deadline:
                if self.degrade:
                    log.warning("home: no majority for %s; committing without a lease "
                                "(degrade = true)", user)
                    return None
                if cut_off_since is not None:
                    raise NoMajority("this server cannot reach a majority of the pool; "
                                     "changes are refused until it can (reads still work)")
                raise Unavailable("the mailbox's home server did not hand over in time; "
                                  "try again")
            await asyncio.sleep(RETRY)  # retry pacing while a holder hands over or expires

    async def renew_term(self, user: str) -> None:
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            if self.proposer.holds(user, time.monotonic()):
                return
            log.info("home: %s's lease on %s lapsed during a change; renewing the term",
                     self.node, user)
            await self._round(user, same_term=True)

    async def _round(self, user: str, *, same_term: bool = False
                     ) -> tuple[dict[str, dict[str, int]], int]:
        """One claim or renewal round: the granters' log positions, how many answered."""
        requests = self.proposer.claim(user, time.monotonic(), same_term=same_term)
        answers = await asyncio.gather(*(self._request(dest, req) for dest, req in requests))
        granted: dict[str, dict[str, int]] = {}
        for answer in answers:
            if answer is None:
                continue
            lease_answer, positions = answer
            self.proposer.on_answer(lease_answer, time.monotonic())
            if lease_answer.granted:
                granted[lease_answer.acceptor] = positions
        return granted, sum(1 for a in answers if a is not None)

    async def _catch_up(self, user: str, granted: dict[str, dict[str, int]],
                        deadline: float) -> None:
        """Hold every record that `catch_up_quorum` nodes held once this node held the lease
        (the granters' positions were read then; the others are asked now) before committing
        for `user` as its home."""
        epoch = self.proposer.epoch(user)
        if self.ready.get(user) == epoch:
            return
        known = dict(granted)
        needed = self.catch_up_quorum()
        while True:
            if len(known) < needed:
                missing = [n for n in self.proposer.nodes if n not in known]
                found = await asyncio.gather(*(self._positions_of(n) for n in missing))
                known.update({n: p for n, p in zip(missing, found, strict=True)
                              if p is not None})
            behind: dict[str, int] | None = None
            if len(known) >= needed:
                wanted: dict[str, int] = {}
                for positions in known.values():
                    for origin, seq in positions.items():
                        wanted[origin] = max(wanted.get(origin, 0), int(seq))
                have = await self.positions()
                behind = {o: s for o, s in wanted.items() if have.get(o, 0) < s}
            if behind == {}:
                self.ready[user] = epoch
                self.claims += 1
                log.info("home: %s holds %s at epoch %d", self.node, user, epoch)
                return
            if time.monotonic() >= deadline:
                if behind is None:
                    log.warning("home: %s not caught up for %s: positions from %d of the %d "
                                "nodes needed", self.node, user, len(known), needed)
                else:
                    log.warning("home: %s not caught up for %s: behind %s", self.node, user,
                                behind)
                return
            await asyncio.sleep(RETRY)  # records arrive over the replication links

    async def _positions_of(self, node: str) -> dict[str, int] | None:
        if node == self.node:
            return await self.positions()
        reply = await self.call(node, {"t": "lease.positions"}, "lease")
        if reply is None:
            return None
        try:
            return {str(k): int(v) for k, v in reply["positions"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("home: bad positions from %s: %s", node, exc)
            return None

    # renewal ------------------------------------------------------------------------------------

    async def renew_forever(self) -> None:
        period = max(0.05, (self.duration - self.proposer.margin) / 8)
        while True:
            await asyncio.sleep(period)  # the renewal tick, not synchronisation
            now = time.monotonic()
            for user in list(self.proposer.claims):
                if now - self.interest.get(user, float("-inf")) > INTEREST:
                    self.interest.pop(user, None)
                    continue
                if self.proposer.due(user, now):
                    self.replicator._spawn(self._renew(user))
                if self.proposer.holds(user, now):
                    self._lapsed.discard(user)
                elif self.ready.get(user) == self.proposer.epoch(user) and \
                        user not in self._lapsed:
                    self._lapsed.add(user)
                    log.warning("home: %s's lease on %s lapsed: renewals got no majority in "
                                "time", self.node, user)

    async def _renew(self, user: str) -> None:
        lock = self._locks.setdefault(user, asyncio.Lock())
        if lock.locked():
            return
        async with lock:
            if self.proposer.due(user, time.monotonic()):
                await self._round(user)

    # talking to peers ---------------------------------------------------------------------------

    async def _request(self, dest: str,
                       request: LeaseRequest) -> tuple[LeaseAnswer, dict[str, int]] | None:
        if dest == self.node:
            return await self._accept(request), await self.positions()
        reply = await self.call(dest, {"t": "lease.request", **_request_json(request)}, "lease")
        if reply is None:
            return None
        try:
            return _answer_from(reply), {str(k): int(v) for k, v in reply["positions"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("home: bad lease answer from %s: %s", dest, exc)
            return None

    async def _release(self, user: str) -> None:
        for dest, release in self.proposer.release(user):
            if dest == self.node:
                self.acceptor.on_release(release, time.monotonic())
            else:
                await self.call(dest, {"t": "lease.release", "user": release.user,
                                        "holder": release.holder, "epoch": release.epoch},
                                 "lease")

    async def _ask_to_yield(self, dest: str, user: str) -> None:
        # A link of its own: a hand-over may wait for changes in flight, renewals must not.
        await self.call(dest, {"t": "lease.yield", "user": user}, "yield",
                         timeout=self._yield_wait())

    def _yield_wait(self) -> float:
        return self.replicator.rconfig.copy_timeout + self.rpc_timeout

    async def call(self, dest: str, message: dict[str, Any], purpose: str,
                    timeout: float | None = None) -> dict[str, Any] | None:
        peer = self.replicator.peers.get(dest)
        if peer is None:
            return None
        from mailmux.replication.peers import LinkClosed  # peers imports this module

        key = f"{dest}/{purpose}"
        lock = self._link_locks.setdefault(key, asyncio.Lock())
        try:
            async with asyncio.timeout(timeout or self.rpc_timeout), lock:
                channel = self._links.get(key) or await self._dial(peer, key)
                await channel.send(message)
                reply = await channel.receive()
        except (OSError, TimeoutError, ValueError) as exc:
            await self._drop(key)
            log.debug("home: %s to %s failed: %s", message.get("t"), dest, exc or type(exc))
            return None
        except (PeerAuthError, LinkClosed) as exc:  # the link is unusable
            await self._drop(key)
            log.info("home: lease link to %s: %s", dest, exc)
            return None
        if reply.get("t") != message["t"]:
            await self._drop(key)
            return None
        return reply

    async def _dial(self, peer: PeerState, key: str) -> Channel:
        channel = await self.replicator._dial(peer)
        self._links[key] = channel
        return channel

    async def _drop(self, dest: str) -> None:
        channel = self._links.pop(dest, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for dest in list(self._links):
            await self._drop(dest)
        await asyncio.to_thread(self.epoch_file.close)

    # answering peers ----------------------------------------------------------------------------

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        kind = str(message.get("t"))
        now = time.monotonic()
        if kind == "lease.request":
            answer = await self._accept(_request_from(message))
            return {"t": kind, **_answer_json(answer), "positions": await self.positions()}
        if kind == "lease.release":
            self.acceptor.on_release(LeaseRelease(str(message["user"]), str(message["holder"]),
                                                  int(message["epoch"])), now)
            return {"t": kind}
        if kind == "lease.yield":
            return {"t": kind, "released": await self._yield(str(message["user"]).lower())}
        if kind == "lease.positions":
            return {"t": kind, "positions": await self.positions()}
        raise ValueError(f"unknown lease message {kind!r}")

    async def _yield(self, user: str) -> bool:
        """Another node needs this user's home: finish the changes in flight, then release."""
        if not self.proposer.holds(user, time.monotonic()):
            return False
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.replicator.rconfig.copy_timeout), self._idle:
                    await self._idle.wait_for(lambda: self.inflight[user] <= 0)
            if not self.proposer.holds(user, time.monotonic()):
                return False
            log.info("home: %s hands %s over", self.node, user)
            self.ready.pop(user, None)
            await self._release(user)
            return True


def _request_json(request: LeaseRequest) -> dict[str, Any]:
    return {"user": request.user, "epoch": request.epoch, "holder": request.holder,
            "duration": request.duration, "round": request.round}


def _request_from(message: dict[str, Any]) -> LeaseRequest:
    return LeaseRequest(str(message["user"]), int(message["epoch"]), str(message["holder"]),
                        float(message["duration"]), int(message["round"]))


def _answer_json(answer: LeaseAnswer) -> dict[str, Any]:
    return {"user": answer.user, "acceptor": answer.acceptor, "holder": answer.holder,
            "round": answer.round, "granted": answer.granted, "current": answer.current,
            "epoch": answer.epoch}


def _answer_from(message: dict[str, Any]) -> LeaseAnswer:
    return LeaseAnswer(str(message["user"]), str(message["acceptor"]), str(message["holder"]),
                       int(message["round"]), bool(message["granted"]), str(message["current"]),
                       int(message["epoch"]))
