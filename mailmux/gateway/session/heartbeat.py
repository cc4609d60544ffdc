"""Watching the nodes that sessions are on: a hung node is noticed in about `hang_timeout`.

A SIGSTOPped or wedged node keeps its TCP connections open and says nothing, so a read from it
would wait for the whole `request_timeout` (or forever, in IDLE). For every node that has at least
one session, the gateway sends an authenticated HEALTH request over the control channel every
`hang_timeout / 4` (each waits up to `hang_timeout`, so a lost or late answer costs one of
several); bytes arriving on any session from that node count as a sign of life too
(a long transfer is progress, not a hang). A node heard from by neither for `hang_timeout` is
hung: it is quarantined and every session on it is told at once (their connections are aborted,
so whatever they were waiting for fails over now), IDLE included.

`request_timeout` stays the outer bound for a node that answers heartbeats but not a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailmux.backend.control.client import query
from mailmux.gateway.session.metrics import HANGS
from mailmux.protocol.control.codec import ControlError
from mailmux.protocol.control.keys import Credential
from mailmux.protocol.control.messages import HealthRequest

log = logging.getLogger(__name__)

Address = tuple[str, int]
MAX_PROBES = 8  # unanswered probes outstanding per node (a hung node's pile stops here)
OnHung = Callable[[str], None]


@dataclass
class _Node:
    control: Address
    last_heard: float
    watchers: dict[int, OnHung] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class Registration:
    """One session's interest in one node; `cancel` when the session leaves the node."""

    def __init__(self, heartbeat: Heartbeat, node_id: str, key: int) -> None:
        self._heartbeat, self.node_id, self._key = heartbeat, node_id, key

    def heard(self) -> None:
        self._heartbeat.heard(self.node_id)

    def cancel(self) -> None:
        self._heartbeat.unregister(self.node_id, self._key)


class Heartbeat:
    def __init__(self, secret: Credential, hang_timeout: float,
                 on_hung: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.secret = secret
        self.hang_timeout = hang_timeout
        self.interval = hang_timeout / 4
        self._on_hung = on_hung
        self._clock = clock
        self._nodes: dict[str, _Node] = {}
        self._keys = 0
        self.hangs: dict[str, int] = {}  # node id → hangs detected, for `status`

    def register(self, node_id: str, control: Address, on_hung: OnHung) -> Registration:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(control, self._clock())
        if node.task is None or node.task.done():
            node.last_heard = self._clock()
            node.task = asyncio.get_running_loop().create_task(self._watch(node_id, node))
        self._keys += 1
        node.watchers[self._keys] = on_hung
        return Registration(self, node_id, self._keys)

    def unregister(self, node_id: str, key: int) -> None:
        node = self._nodes.get(node_id)
        if node is not None:
            node.watchers.pop(key, None)

    def heard(self, node_id: str) -> None:
        node = self._nodes.get(node_id)
        if node is not None:
            node.last_heard = self._clock()

    def watched(self) -> list[str]:
        return [n for n, node in self._nodes.items() if node.watchers]

    async def _watch(self, node_id: str, node: _Node) -> None:
        # A new probe every interval, whether or not earlier ones were answered: one datagram
        # lost, or one answer late on a loaded machine, must not leave the node unasked until
        # the verdict (each probe waits up to hang_timeout; any answer is life).
        probes: set[asyncio.Task[None]] = set()
        try:
            while node.watchers:
                probes = {p for p in probes if not p.done()}
                if len(probes) < MAX_PROBES:
                    probes.add(asyncio.ensure_future(self._probe(node_id, node)))
                silent = self._clock() - node.last_heard
                if silent > self.hang_timeout:
                    self._hung(node_id, node, silent)
                    return
                before = self._clock()
                await asyncio.sleep(self.interval)  # a timer: the heartbeat's cadence
                late = self._clock() - before - self.interval
                if late > self.interval:
                    # The gateway itself was starved (a loaded machine): the node's answer may
                    # be sitting unread. Its silence is not the node's fault.
                    node.last_heard += late
        finally:
            for probe in probes:
                probe.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*probes, return_exceptions=True)

    async def _probe(self, node_id: str, node: _Node) -> None:
        try:
            await query(node.control, HealthRequest(), self.secret, timeout=self.hang_timeout)
        except (TimeoutError, OSError, ControlError) as exc:
            log.debug("heartbeat: no answer from %s: %r", node_id, exc)
            return
        node.last_heard = self._clock()

    def _hung(self, node_id: str, node: _Node, silent: float) -> None:
        reason = f"{node_id} hung (silent for {silent:.2f}s)"
        watchers = list(node.watchers.values())
        node.watchers.clear()
        self.hangs[node_id] = self.hangs.get(node_id, 0) + 1
        HANGS.labels(node_id).inc()
        log.warning("heartbeat: %s; failing over its %d session(s)", reason, len(watchers))
        if self._on_hung is not None:
            self._on_hung(node_id, reason)
        for notify in watchers:
            notify(reason)

    async def close(self) -> None:
        tasks = [n.task for n in self._nodes.values() if n.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
