"""Pool membership and discovery: "who serves USER?" asked of every member at once (S5-S11).

Members come from three places, merged: the config's `pool` list of control addresses, DNS SRV
records `_mailmux._udp.<srv_domain>` (looked up with dnspython, cached for the record's TTL), and
an optional UDP broadcast on the LAN. Every answer is HMAC-checked by the control client; forged,
stale or replayed answers are dropped there and logged.

Nodes that failed twice are left out until the background re-probe finds them healthy again
(`health.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailmux.backend.control.client import query
from mailmux.gateway.config import GatewayConfig
from mailmux.gateway.health import HealthBook
from mailmux.gateway.selection import Address, Candidate, order
from mailmux.gateway.session.heartbeat import Heartbeat
from mailmux.gateway.session.metrics import FailoverMetrics
from mailmux.protocol.control.codec import NONCE_SIZE, ControlError, ReplayCache, decode, encode
from mailmux.protocol.control.messages import HealthRequest, WhoReply, WhoRequest

log = logging.getLogger(__name__)

SRV_PREFIX = "_mailmux._udp."
MIN_SRV_TTL = 5.0
MAX_CACHED_USERS = 10_000
CHOSEN_FOR = 5.0  # seconds a homeless user's chosen node is kept for the user's next logins


def parse_endpoint(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Answer:
    """One member's answer to a discovery question, kept for `discover` and `status`."""

    control: Address
    reply: WhoReply
    latency: float

    def candidate(self) -> Candidate:
        return Candidate(
            node_id=self.reply.node_id,
            control=self.control,
            imap=parse_endpoint(self.reply.imap),
            smtp=parse_endpoint(self.reply.smtp),
            load=self.reply.load,
            latency=self.latency,
        )


class Pool:
    def __init__(self, config: GatewayConfig, health: HealthBook | None = None) -> None:
        self.config = config
        self.health = health or HealthBook()
        self._srv_members: list[Address] = []
        self._srv_expires = 0.0
        self._control_of: dict[str, Address] = {}
        # user -> (expiry, answers): a client's several connections share one fan-out.
        self._answers: dict[str, tuple[float, list[Answer]]] = {}
        # user → (node, until): the node chosen for a user whose answers named no home yet.
        # Logins that come together (a client opening 3 to 5 connections) all go there; that node
        # claims the lease at the first login and the answers name it from then on.
        self._chosen: dict[str, tuple[str, float]] = {}
        # node -> {session token: when placed}: sessions this gateway placed there that are still
        # open. A cached answer's load is stale by exactly those placed after it was asked; without
        # them p2c and least-load herd onto one node for a whole TTL.
        self._placed: dict[str, dict[int, float]] = {}
        self._tokens = itertools.count()
        self._prober: asyncio.Task[None] | None = None
        self.metrics = FailoverMetrics()
        self.heartbeat = Heartbeat(config.gateway_key, config.hang_timeout, on_hung=self.hung)

    # membership -------------------------------------------------------------------------

    async def members(self) -> list[Address]:
        found = list(self.config.pool)
        if self.config.srv_domain is not None:
            found += [m for m in await self._srv() if m not in found]
        return found

    async def _srv(self) -> list[Address]:
        if time.monotonic() < self._srv_expires:
            return self._srv_members
        domain = SRV_PREFIX + str(self.config.srv_domain)
        resolver = self._resolver()
        try:
            answer = await resolver.resolve(domain, "SRV", lifetime=self.config.discovery_timeout)
        except dns.exception.DNSException as exc:
            log.warning("discovery: SRV lookup of %s failed: %s", domain, exc)
            return self._srv_members  # keep the last good list rather than losing the pool
        members: list[Address] = []
        for record in sorted(answer, key=lambda r: (r.priority, -r.weight)):
            target = record.target.to_text(omit_final_dot=True)
            for host in await self._addresses(resolver, target):
                members.append((host, int(record.port)))
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        self._srv_members = members
        self._srv_expires = time.monotonic() + max(float(ttl), MIN_SRV_TTL)
        log.info("discovery: SRV %s gives %d member(s)", domain, len(members))
        return members

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self.config.dns_server is None:
            return dns.asyncresolver.Resolver()
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, port = self.config.dns_server
        resolver.nameservers = [host]
        resolver.port = port
        return resolver

    async def _addresses(self, resolver: dns.asyncresolver.Resolver, target: str) -> list[str]:
        try:
            answer = await resolver.resolve(target, "A", lifetime=self.config.discovery_timeout)
        except dns.exception.DNSException as exc:
            log.warning("discovery: cannot resolve SRV target %s: %s", target, exc)
            return []
        return [r.to_text() for r in answer]

    # discovery --------------------------------------------------------------------------

    async def ask(self, user: str, *, stop_at_first_yes: bool = False) -> list[Answer]:
        """Every signed answer to WHO USER within the discovery deadline, fastest first."""
        timeout = self.config.discovery_timeout
        started = time.monotonic()
        # Quarantined members are asked too, but not waited for: a stopped node would cost the
        # whole deadline. Their answers count only when nobody else serves the user.
        out = {self._control_of[n] for n in self.health.quarantined() if n in self._control_of}
        members = await self.members()
        asks = [self._ask_one(member, user, timeout) for member in members if member not in out]
        if self.config.broadcast is not None:
            asks.append(self._broadcast(user, timeout))
        tasks = [asyncio.ensure_future(a) for a in asks]
        side = [asyncio.ensure_future(self._ask_one(m, user, timeout)) for m in members
                if m in out]
        answers: list[Answer] = []

        def take(found: list[tuple[Address, WhoReply]]) -> None:
            latency = time.monotonic() - started
            for control, reply in found:
                answers.append(Answer(control, reply, latency))
                self._control_of[reply.node_id] = control

        try:
            for next_done in asyncio.as_completed(tasks):
                take(await next_done)
                if stop_at_first_yes and any(a.reply.serves for a in answers):
                    break
            if side and not any(a.reply.serves for a in answers):
                # Nobody healthy serves the user: wait for the quarantined ones after all.
                for next_done in asyncio.as_completed(side):
                    take(await next_done)
            else:
                for task in side:
                    if task.done() and not task.cancelled() and task.exception() is None:
                        take(task.result())
        finally:
            for task in [*tasks, *side]:
                task.cancel()
            await asyncio.gather(*tasks, *side, return_exceptions=True)
        return _unique(answers)

    async def _ask_one(
        self, member: Address, user: str, timeout: float
    ) -> list[tuple[Address, WhoReply]]:
        try:
            reply = await query(member, WhoRequest(user), self.config.gateway_key, timeout=timeout)
        except (TimeoutError, OSError, ControlError) as exc:
            log.debug("discovery: no answer from %s:%d: %r", *member, exc)
            return []
        return [(member, reply)]

    async def discover(self, user: str, policy: str) -> list[Candidate]:
        """Members that serve USER and are not quarantined, as selection candidates."""
        answers, asked_at = await self._recent_answers(user, policy)
        candidates = []
        quarantined = []
        for answer in answers:
            if not answer.reply.serves:
                continue
            if self.health.is_quarantined(answer.reply.node_id):
                log.info("discovery: %s serves %s but is quarantined", answer.reply.node_id, user)
                quarantined.append(answer.candidate())
                continue
            candidate = answer.candidate()
            since = self.placed_since(candidate.node_id, asked_at)
            candidates.append(replace(candidate, load=candidate.load + since))
        if not candidates and quarantined:
            # Better a node that was slow a moment ago than refusing the user outright.
            log.info("discovery: only quarantined members serve %s; trying them", user)
            candidates = quarantined
        home = _home(answers)
        if not home and any(a.reply.leased for a in answers):
            home = self._choose(user, candidates, policy)
        candidates = [replace(c, home=c.node_id == home) for c in candidates]
        log.info(
            "discovery: %s served by %s",
            user, ", ".join(f"{c.node_id}(load {c.load:.1f})" for c in candidates) or "nobody",
        )
        return candidates

    async def home_of(self, user: str, policy: str, serving: Candidate) -> Candidate | None:
        """The user's lease holder, if it is a live node other than `serving`; None when the
        home is `serving`, or no node holds the lease. From the cached answers while fresh,
        else from `serving` alone (one datagram to a node known alive: a change never waits
        on the whole pool's answers); a full discovery only when the home is elsewhere."""
        cached = self._answers.get(user)
        if cached is not None and cached[0] > time.monotonic():
            home = _home(cached[1])
        else:
            try:
                reply = await query(serving.control, WhoRequest(user), self.config.gateway_key,
                                    timeout=self.config.discovery_timeout)
            except (TimeoutError, OSError, ControlError) as exc:
                log.debug("home of %s: no answer from %s: %r", user, serving.node_id, exc)
                return None
            home = reply.home
        if not home or home == serving.node_id or self.health.is_quarantined(home):
            return None
        for candidate in await self.discover(user, policy):
            if candidate.node_id == home:
                return candidate
        return None

    def _choose(self, user: str, candidates: list[Candidate], policy: str) -> str:
        """No live home: the least-loaded candidate (by the policy), the same one for every
        login of the user until the lease shows in the answers."""
        now = time.monotonic()
        chosen = self._chosen.get(user)
        ids = {c.node_id for c in candidates}
        if chosen is not None and chosen[1] > now and chosen[0] in ids:
            return chosen[0]
        if not candidates:
            return ""
        if len(self._chosen) >= MAX_CACHED_USERS:
            self._chosen = {u: c for u, c in self._chosen.items() if c[1] > now}
        node = order(candidates, policy)[0].node_id
        if len(self._chosen) < MAX_CACHED_USERS:
            self._chosen[user] = (node, now + CHOSEN_FOR)
        return node

    async def _recent_answers(self, user: str, policy: str) -> tuple[list[Answer], float]:
        """The user's discovery answers and when they were asked (possibly from the cache)."""
        ttl = self.config.discovery_cache_ttl
        now = time.monotonic()
        cached = self._answers.get(user)
        if ttl > 0 and cached is not None and cached[0] > now:
            return cached[1], cached[0] - ttl
        answers = await self.ask(user, stop_at_first_yes=policy == "first-responder")
        if ttl > 0 and any(a.reply.serves for a in answers):
            if len(self._answers) >= MAX_CACHED_USERS:
                self._answers = {u: c for u, c in self._answers.items() if c[0] > now}
            if len(self._answers) < MAX_CACHED_USERS:
                self._answers[user] = (now + ttl, answers)
        return answers, time.monotonic()

    def forget_answers(self, user: str) -> None:
        """The next discovery of USER asks the pool again (the cached answer did not do)."""
        self._answers.pop(user, None)

    def placed_since(self, node_id: str, since: float) -> int:
        """Open sessions this gateway placed on NODE_ID after SINCE (monotonic time)."""
        return sum(1 for t in self._placed.get(node_id, {}).values() if t >= since)

    def placed(self, node_id: str) -> Callable[[], None]:
        """Count a session placed on NODE_ID until the returned release is called."""
        now = time.monotonic()
        live = self._placed.setdefault(node_id, {})
        horizon = now - self.config.discovery_cache_ttl
        for token in [k for k, t in live.items() if t < horizon]:
            del live[token]  # older than any cached answer: counted in the node's own load
        token = next(self._tokens)
        live[token] = now

        def release() -> None:
            live.pop(token, None)
        return release

    async def _broadcast(self, user: str, timeout: float) -> list[tuple[Address, WhoReply]]:
        """Send one signed WHO to the broadcast address; gather every valid answer in time."""
        assert self.config.broadcast is not None
        loop = asyncio.get_running_loop()
        secret = self.config.gateway_key
        request_id = os.urandom(NONCE_SIZE)
        replies: list[tuple[Address, WhoReply]] = []
        cache = ReplayCache(max_entries=256)

        class Collector(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Address) -> None:
                try:
                    reply, envelope = decode(data, secret, now=time.time(), replay_cache=cache)
                except ControlError as exc:
                    log.warning("discovery: ignoring broadcast answer from %s: %s", addr[0], exc)
                    return
                if envelope.request_id == request_id and isinstance(reply, WhoReply):
                    replies.append(((addr[0], addr[1]), reply))

        transport, _ = await loop.create_datagram_endpoint(
            Collector, local_addr=("0.0.0.0", 0), allow_broadcast=True
        )
        try:
            data = encode(WhoRequest(user), secret, now=time.time(), nonce=request_id)
            transport.sendto(data, self.config.broadcast)
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(timeout)  # a broadcast has no "last answer": wait it out
        finally:
            transport.close()
        return replies

    # health -----------------------------------------------------------------------------

    def failed(self, node_id: str, error: str) -> None:
        self.health.failed(node_id, error)
        self._answers.clear()  # loads and homes may have moved: ask afresh
        self._chosen = {u: c for u, c in self._chosen.items() if c[0] != node_id}
        if self.health.is_quarantined(node_id):
            log.warning("pool: %s failed twice (%s); left out until it answers again",
                        node_id, error)
            self._ensure_prober()

    def hung(self, node_id: str, error: str) -> None:
        self.health.quarantine(node_id, error)
        self._answers.clear()  # loads and homes may have moved: ask afresh
        self._chosen = {u: c for u, c in self._chosen.items() if c[0] != node_id}
        self._ensure_prober()

    def succeeded(self, node_id: str) -> None:
        self.health.succeeded(node_id)

    def _ensure_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while True:
            for node_id in self.health.due_for_probe():
                await self._probe(node_id)
            if not any(self.health.is_quarantined(n) for n in list(self._control_of)):
                return
            await asyncio.sleep(0.5)  # a timer, not synchronisation: re-probe cadence

    async def _probe(self, node_id: str) -> None:
        control = self._control_of.get(node_id)
        if control is None:
            self.health.succeeded(node_id)
            return
        try:
            await query(control, HealthRequest(), self.config.gateway_key,
                        timeout=self.config.discovery_timeout)
        except (TimeoutError, OSError, ControlError) as exc:
            self.health.probe_failed(node_id, repr(exc))
            return
        log.info("pool: %s answers again; back in the candidate list", node_id)
        self.health.succeeded(node_id)
        self._answers.clear()  # cached answers may lack it: it was not waited for meanwhile

    async def close(self) -> None:
        await self.heartbeat.close()
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober


def _home(answers: list[Answer]) -> str:
    """The user's home as the answers name it: the one of the highest epoch ("" if none)."""
    named = [(a.reply.epoch, a.reply.home) for a in answers if a.reply.home]
    return max(named)[1] if named else ""


def _unique(answers: list[Answer]) -> list[Answer]:
    """One answer per node id (the same node may be listed twice, e.g. config and SRV)."""
    seen: set[str] = set()
    unique = []
    for answer in answers:
        if answer.reply.node_id not in seen:
            seen.add(answer.reply.node_id)
            unique.append(answer)
    return unique
