"""A read barrier: a session on a node that is not the user's home first catches up.

Only the home commits a user's changes, and a change is acknowledged once W nodes hold it — not
necessarily this one. A client with sessions on two nodes (after a failover, a standby, two
gateways) that syncs with NOOP or CHECK on a non-home node must still see every change
acknowledged before it asked: imaptest's checkpoints compare exactly that.

So before a sync point (NOOP, CHECK, SELECT, EXAMINE, STATUS, IDLE) on a node that is not the
user's home, the node asks its peers for their log positions and waits until it holds every
record a majority of the pool held (this node counts as one). An acknowledged change is on W
nodes and W + majority > pool size (the same argument as the home's catch-up), so some member
of that majority holds it. The wait is bounded: a node that cannot reach a majority, or cannot
catch up in time, serves what it holds (reads keep working on a minority side).

The home itself needs no barrier: it committed every change of its term, and caught up with
every granter's records before its first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from mailmux.protocol.peer.session import PeerAuthError

if TYPE_CHECKING:
    from mailmux.replication.peers import Channel, PeerState, Replicator

log = logging.getLogger(__name__)

POLL = 0.1  # between looks at the log when no commit woke the waiter


class ReadBarrier:
    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator
        self.rpc_timeout = max(0.2, replicator.config.replication.lease / 4)
        # at most this long for the records to arrive; then serve what is here
        self.limit = replicator.config.replication.read_barrier
        self._links: dict[str, Channel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._committed = asyncio.Event()
        self.waits = 0  # barriers that had to wait for records (status and tests)

    def committed(self) -> None:
        """A commit hook: records may have arrived."""
        self._committed.set()

    def needed(self, user: str) -> bool:
        homes = self.replicator.homes
        if homes is None or not self.replicator.peers:
            return False
        user = user.lower()
        proposer = homes.proposer
        return not (proposer.holds(user, time.monotonic())
                    and homes.ready.get(user) == proposer.epoch(user))

    async def wait(self, user: str) -> None:
        if not self.needed(user):
            return
        deadline = time.monotonic() + self.limit
        wanted = await self._majority_positions()
        if wanted is None:
            log.debug("barrier: no majority answered for %s; serving what is here", user)
            return
        waited = False
        while True:
            self._committed.clear()
            have = await self.replicator.store.positions()
            behind = {o: s for o, s in wanted.items() if have.get(o, 0) < s}
            if not behind:
                if waited:
                    self.waits += 1
                return
            if not waited:
                log.info("barrier: %s waits for records %s before serving %s",
                         self.replicator.config.node_id, behind, user)
            waited = True
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("barrier: %s still behind %s for %s; serving what it holds",
                            self.replicator.config.node_id, behind, user)
                return
            try:
                async with asyncio.timeout(min(left, POLL)):
                    await self._committed.wait()
            except TimeoutError:
                pass

    async def _majority_positions(self) -> dict[str, int] | None:
        """The highest position per origin over this node and a majority of the pool."""
        peers = list(self.replicator.peers.values())
        needed = (len(peers) + 1) // 2  # peers that, with this node, make a majority
        wanted: dict[str, int] = {}
        answered = 0
        tasks = [asyncio.ensure_future(self._ask(peer)) for peer in peers]
        try:
            for next_done in asyncio.as_completed(tasks):
                positions = await next_done
                if positions is None:
                    continue
                answered += 1
                for origin, seq in positions.items():
                    wanted[origin] = max(wanted.get(origin, 0), seq)
                if answered >= needed:
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return wanted if answered >= needed else None

    async def _ask(self, peer: PeerState) -> dict[str, int] | None:
        from mailmux.replication.peers import LinkClosed  # peers imports this module

        key = peer.node_id
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with asyncio.timeout(self.rpc_timeout), lock:
                channel = self._links.get(key)
                if channel is None:
                    channel = self._links[key] = await self.replicator._dial(peer)
                await channel.send({"t": "positions"})
                reply: dict[str, Any] = await channel.receive()
            return {str(k): int(v) for k, v in reply["positions"].items()}
        except (OSError, TimeoutError, ValueError, KeyError, TypeError, PeerAuthError,
                LinkClosed) as exc:
            self._abandon(key)
            log.debug("barrier: positions from %s failed: %s", key, exc or type(exc))
            return None
        except asyncio.CancelledError:
            self._abandon(key)  # an answer may still be on its way: the link is out of step
            raise

    def _abandon(self, key: str) -> None:
        channel = self._links.pop(key, None)
        if channel is not None:
            channel.writer.transport.abort()

    async def close(self) -> None:
        for key in list(self._links):
            self._abandon(key)
