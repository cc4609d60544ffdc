"""Deliveries committed by each recipient's home.

A message arriving over SMTP or LMTP at one node may name users whose homes (the nodes that
hold their leases, replication/home.py) are elsewhere. Storing it here would make this node
take each such user's lease — the home hands it over, the user's sessions on the home then
need it back for their next change — and concurrent deliveries at two nodes would pull the
lease to and fro. Instead the intake splits the recipients by home: its own share it stores,
each other home's share it sends to that home over an authenticated peer link (`deliver`), and
the home stores it as any delivery (one transaction, W copies before it answers). The intake
answers 250 only when every share is stored; a home it cannot reach has its share stored here
after all (the lease then moves, as before), so routing never makes a delivery fail that
would have succeeded.

A forwarded share carries a replay id of its own (the intake's GUID and the home's name): the
home answers a second send as the first, and the local fallback after a lost answer uses the
same id, so a share the home stored and replicated here is not stored twice.

Transactions with a gateway's XREPLAY id are not split: the gateway sends one transaction per
home already (gateway/submission.py), and a split would give the shares ids a replay could not
match.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailmux.backend.errors import BackendError
from mailmux.backend.store.interface import AppendResult
from mailmux.backend.store.replay import REPLAY, Replayed

if TYPE_CHECKING:
    from mailmux.replication.peers import Replicator

log = logging.getLogger(__name__)

BOARD_ADDRESS_PREFIX = "board+"
MAX_FORWARD_BYTES = 64 * 1024 * 1024  # larger messages are stored here (a frame is 256 MiB)


class HomeRouter:
    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator
        self.node = replicator.config.node_id
        self.forwarded = 0  # shares stored by another home (status and tests)

    def _home_of(self, recipient: str) -> str:
        if recipient.lower().startswith(BOARD_ADDRESS_PREFIX):
            return self.node  # boards have no home
        homes = self.replicator.homes
        held = homes.holder(recipient) if homes is not None else None
        if held is None or held[0] == self.node:
            return self.node
        peer = self.replicator.peers.get(held[0])
        return held[0] if peer is not None and peer.connected else self.node

    async def deliver(self, recipients: Sequence[str], body: bytes,
                      guid: str) -> list[AppendResult]:
        store = self.replicator.store
        shares: dict[str, list[str]] = {}
        for recipient in recipients:
            shares.setdefault(self._home_of(recipient), []).append(recipient)
        if list(shares) == [self.node] or len(body) > MAX_FORWARD_BYTES:
            return await store.deliver_here(recipients, body, guid)
        results = await asyncio.gather(*(
            store.deliver_here(share, body, guid) if home == self.node
            else self._forward(home, share, body, guid)
            for home, share in shares.items()))
        return [r for found in results for r in found]

    async def _forward(self, home: str, recipients: list[str], body: bytes,
                       guid: str) -> list[AppendResult]:
        replay_id = f"{guid}.{home}"[:64]
        reply = await self._call(home, {
            "t": "deliver", "r": recipients, "g": guid, "x": replay_id,
            "m": base64.b64encode(body).decode()})
        if reply is not None and reply.get("ok"):
            self.forwarded += 1
            log.info("delivery %s to %s stored by their home %s", guid, ", ".join(recipients),
                     home)
            return []
        if reply is not None and str(reply.get("reply", "")).startswith("5"):
            error = BackendError(str(reply.get("reply")))
            error.smtp_reply = str(reply["reply"])
            raise error
        # The home is unreachable or refused for now: store the share here after all, under
        # the same replay id (if the home did store it and its record is here, that is all).
        log.info("delivery %s to %s: home %s did not store it (%s); storing it here", guid,
                 ", ".join(recipients), home, "no answer" if reply is None else reply.get("reply"))
        token = REPLAY.set(replay_id)
        try:
            return await self.replicator.store.deliver_here(recipients, body, guid)
        except Replayed:
            return []
        finally:
            REPLAY.reset(token)

    async def _call(self, dest: str, message: dict[str, Any]) -> dict[str, Any] | None:
        # the lease's peer calls, on a link of their own: a delivery waits for W copies there
        homes = self.replicator.homes
        if homes is None:
            return None
        return await homes.call(dest, message, "deliver",
                                timeout=2 * self.replicator.rconfig.copy_timeout + 5.0)

    async def close(self) -> None:
        """Nothing to close: the links are the home leases' (HomeLeases.close)."""

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """A peer's share of a delivery for users homed here: store it as any delivery."""
        recipients = [str(r) for r in message["r"]][:1000]
        body = base64.b64decode(str(message["m"]))
        token = REPLAY.set(str(message["x"]))
        try:
            await self.replicator.store.deliver_here(recipients, body, str(message["g"]))
        except Replayed:
            pass
        except BackendError as exc:
            return {"t": "deliver", "ok": False, "reply": exc.smtp_reply}
        finally:
            REPLAY.reset(token)
        return {"t": "deliver", "ok": True}

