"""The outbound queue as the node uses it: async calls over the node's SQLite store.

Every change is one change record, applied here by the same rules peers use (`records.py`) and
logged in the same transaction, so replication ships it like any mailbox change. Enqueueing
waits for the copies the message's importance asks for (the store's copies hook, i.e. W
acknowledging peers) and, when they cannot be made, ends the message again and raises
`Unavailable`: the sender gets 451 and nothing is delivered.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailmux.backend.errors import Unavailable
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.backend.store.writer import Tx
from mailmux.outbound import records

REFUSED = "refused:"
_COLUMNS = ("id, sender, recipients, size, created, next_attempt, attempts, owner, epoch, "
            "lease_until, state, warned, last_error, done_reason")


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    sender: str
    recipients: dict[str, dict[str, Any]]  # address → {"state", "code", "text"}
    size: int
    created: float
    next_attempt: float
    attempts: int
    owner: str
    epoch: int
    lease_until: float
    state: str
    warned: bool
    last_error: str
    done_reason: str

    @property
    def pending(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s["state"] == "pending"]

    @property
    def unreported(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s["state"] == "failed"]

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _row(row: Sequence[Any]) -> QueuedMessage:
    (mid, sender, recipients, size, created, next_attempt, attempts, owner, epoch, lease_until,
     state, warned, last_error, done_reason) = row
    return QueuedMessage(str(mid), str(sender), json.loads(recipients), int(size),
                         float(created), float(next_attempt), int(attempts), str(owner),
                         int(epoch), float(lease_until), str(state), bool(warned),
                         str(last_error), str(done_reason))


class OutboundQueue:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def _change(self, kind: str, payload: dict[str, Any],
                      bodies: dict[str, bytes] | None = None) -> int:
        def job(tx: Tx) -> int:
            self.store._log(tx, kind, payload)
            records.apply(tx.conn, kind, payload, bodies)
            return tx.logged

        return await self.store._write(job)

    # writes ---------------------------------------------------------------------------------

    async def enqueue(self, message_id: str, sender: str, recipients: Sequence[str],
                      body: bytes, now: float, lease: float) -> bool:
        """Queue a message durably on W nodes; False if that id was already queued (a replay)."""
        fresh = await self._fresh_id(message_id)
        if fresh is None:
            return False
        message_id = fresh
        body_hash = hashlib.sha256(body).hexdigest()  # the store's body key (content hash)
        seq = await self._change("outbound.enqueue", {
            "id": message_id, "sender": sender, "recipients": list(dict.fromkeys(recipients)),
            "body": body_hash, "size": len(body), "created": now,
            "next_attempt": now, "owner": self.store.node_id, "epoch": 1,
            "lease_until": now + lease,
        }, {body_hash: body})
        if self.store.copies_hook is not None:
            try:
                await self.store.copies_hook(body, seq)
            except Unavailable:
                await self.finish(message_id, f"{REFUSED} not enough copies")
                raise
        return True

    async def _fresh_id(self, message_id: str) -> str | None:
        """The id to queue under, or None for a replay of a queued (or sent) message.

        A submission refused for lack of copies leaves a tombstone under its id; the client's
        retry of the same bytes has the same GUID and must be queued, not taken for a replay, so
        it gets the next free `ID.n` (a refusal never erases a later acceptance).
        """
        for n in range(1000):
            candidate = message_id if n == 0 else f"{message_id}.{n}"
            existing = await self.get(candidate)
            if existing is None:
                return candidate
            if not existing.done_reason.startswith(REFUSED):
                return None
        return None

    async def claim(self, message_id: str, epoch: int, until: float) -> bool:
        """Take or renew the delivery lease; True if this node holds it afterwards."""
        await self._change("outbound.claim", {
            "id": message_id, "owner": self.store.node_id, "epoch": epoch, "lease_until": until,
        })
        current = await self.get(message_id)
        return (current is not None and current.state == "queued"
                and current.owner == self.store.node_id and current.epoch == epoch)

    async def record_attempt(self, message: QueuedMessage, results: dict[str, dict[str, Any]],
                             next_attempt: float, until: float, error: str,
                             warned: bool = False) -> None:
        await self._change("outbound.attempt", {
            "id": message.id, "owner": self.store.node_id, "epoch": message.epoch,
            "attempts": message.attempts + 1, "next_attempt": next_attempt, "lease_until": until,
            "recipients": results, "last_error": error[:500], "warned": int(warned),
        })

    async def mark(self, message: QueuedMessage, results: dict[str, dict[str, Any]],
                   warned: bool = False) -> None:
        """Record recipient states (e.g. reported) without counting an attempt."""
        await self._change("outbound.attempt", {
            "id": message.id, "owner": self.store.node_id, "epoch": message.epoch,
            "attempts": message.attempts, "next_attempt": message.next_attempt,
            "lease_until": message.lease_until, "recipients": results,
            "last_error": message.last_error, "warned": int(warned or message.warned),
        })

    async def retry(self, message_id: str, now: float, lease: float) -> bool:
        message = await self.get(message_id)
        if message is None or message.state != "queued":
            return False
        await self._change("outbound.retry", {"id": message_id, "next_attempt": now,
                                              "lease_until": now + lease})
        return True

    async def finish(self, message_id: str, reason: str) -> None:
        await self._change("outbound.done", {"id": message_id, "reason": reason})

    # reads ----------------------------------------------------------------------------------

    async def get(self, message_id: str) -> QueuedMessage | None:
        row = await self.store._read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM outbound_queue WHERE id = ?", (message_id,)).fetchone())
        return None if row is None else _row(row)

    async def body(self, message_id: str) -> bytes | None:
        row = await self.store._read(lambda c: c.execute(
            "SELECT b.data FROM outbound_queue o JOIN bodies b ON b.hash = o.body_hash "
            "WHERE o.id = ?", (message_id,)).fetchone())
        return None if row is None or row[0] is None else bytes(row[0])

    async def queued(self, limit: int = 10_000) -> list[QueuedMessage]:
        rows = await self.store._read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM outbound_queue WHERE state = 'queued' "
            "ORDER BY created LIMIT ?", (limit,)).fetchall())
        return [_row(r) for r in rows]

    async def due(self, now: float, horizon: float, limit: int) -> list[QueuedMessage]:
        """Queued messages with a body whose next attempt is before now + horizon."""
        def read(c: sqlite3.Connection) -> list[Any]:
            return c.execute(
                f"SELECT {_COLUMNS} FROM outbound_queue WHERE state = 'queued' "
                "AND body_hash IS NOT NULL AND next_attempt <= ? ORDER BY next_attempt LIMIT ?",
                (now + horizon, limit)).fetchall()

        return [_row(r) for r in await self.store._read(read)]

    async def stats(self, now: float) -> tuple[int, float]:
        """(messages queued, age in seconds of the oldest)."""
        count, oldest = await self.store._read(lambda c: c.execute(
            "SELECT count(*), min(created) FROM outbound_queue WHERE state = 'queued'"
        ).fetchone())
        return int(count), (max(0.0, now - float(oldest)) if oldest is not None else 0.0)
