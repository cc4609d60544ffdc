"""Anti-entropy by content digests over a peer link (the asyncio half; the store half and
the merge rules are `backend/store/repair.py`).

On every (re)connection and then every `DIGEST_INTERVAL` seconds, the dialling node compares
its per-mailbox digests with the peer's; for a mailbox that differs it compares bucket digests,
fetches the rows of the buckets that differ (and which of its own GUIDs there the peer has
tombstoned, and the bodies it lacks), and merges them. A record lost, skipped or applied
differently is repaired all the same; but a mailbox is merged only when both sides hold the
same change records (the rows answer says which): a difference that records still in flight
will settle is left to them, so MODSEQs stay those of the records, identical everywhere. Every
node dials every peer, so both sides of each pair pull from each other and converge.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mailmux.backend.store import repair
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.backend.store.writer import Tx

log = logging.getLogger(__name__)

DIGEST_INTERVAL = 10.0
MAX_BODY_BYTES = 8 * 1024 * 1024  # per bodies answer; the rest follows on the next pass

Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def answer(store: SqliteStore, message: dict[str, Any]) -> dict[str, Any] | None:
    """The listener's answer to an anti-entropy request, or None if it is not one."""
    kind = message.get("t")
    if kind == "digests":
        return {"t": "digests", "d": await store._read(repair.digests)}
    if kind == "buckets":
        key = repair.key_from_text(str(message["k"]))
        digest = await store._read(lambda c: repair.buckets(c, key))
        return {"t": "buckets", "b": {str(b): d for b, d in digest.items()}}
    if kind == "rows":
        key = repair.key_from_text(str(message["k"]))
        wanted = [int(b) for b in message["b"]]
        rows, high, held = await store._read(lambda c: (
            repair.rows(c, key, wanted), repair.highest(c, key), repair.positions(c)))
        # The records this snapshot reflects: the puller merges only if it holds the same.
        return {"t": "rows", "r": [r.to_json() for r in rows], "h": high, "p": held}
    if kind == "tombstoned":
        key = repair.key_from_text(str(message["k"]))
        guids = [str(g) for g in message["g"]][: repair.MAX_ROWS]
        return {"t": "tombstoned", "g": await store._read(
            lambda c: repair.tombstoned(c, key, guids))}
    if kind == "bodies":
        found = await store.bodies_for([str(h) for h in message["h"]][: repair.MAX_ROWS])
        out: dict[str, str] = {}
        size = 0
        for h, body in found.items():
            size += len(body)
            if out and size > MAX_BODY_BYTES:
                break
            out[h] = base64.b64encode(body).decode()
        return {"t": "bodies", "b": out}
    return None


async def reconcile(store: SqliteStore, ask: Ask, peer: str) -> int:
    """Pull and merge whatever differs from `peer`; returns the mailboxes repaired."""
    mine = await store._read(repair.digests)
    theirs = (await ask({"t": "digests"}))["d"]
    repaired = 0
    for text in sorted(set(mine) & set(theirs)):
        if mine[text] != theirs[text] and await _mailbox(store, ask, text, peer):
            repaired += 1
    return repaired


async def _mailbox(store: SqliteStore, ask: Ask, text: str, peer: str) -> bool:
    key = repair.key_from_text(text)
    mine = await store._read(lambda c: repair.buckets(c, key))
    theirs = {int(b): d for b, d in (await ask({"t": "buckets", "k": text}))["b"].items()}
    # An empty bucket list with a differing mailbox digest is a HIGHESTMODSEQ difference
    # (from expunges): bucket 0's rows carry the peer's HIGHESTMODSEQ along.
    differ = sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b)) or [0]
    answer = await ask({"t": "rows", "k": text, "b": differ})
    rows = [repair.Row.from_json(r) for r in answer["r"]]
    their_highest = int(answer.get("h") or 0)
    their_guids = {r.guid for r in rows}
    local = await store._read(lambda c: repair.rows(c, key, differ))
    only_mine = [r.guid for r in local if r.guid not in their_guids]
    gone: list[str] = []
    if only_mine:
        gone = [str(g) for g in (await ask({"t": "tombstoned", "k": text, "g": only_mine}))["g"]]
    need = await store._read(lambda c: repair.missing_bodies(c, [r.body for r in rows]))
    bodies: dict[str, bytes] = {}
    if need:
        raw = (await ask({"t": "bodies", "h": need}))["b"]
        bodies = {h: base64.b64decode(b) for h, b in raw.items()}
    held = answer.get("p")
    their_positions = ({str(o): int(s) for o, s in held.items()} if isinstance(held, dict)
                       else None)

    def job(tx: Tx) -> repair.Merged | None:
        # Only what the log cannot settle is repaired: while either side holds change records
        # the other lacks (records in flight after a restart, a hang, a busy link), the rows
        # differ because of them, and merging them here would stamp local MODSEQs that the
        # records' own (the same on every replica) then never replace. The next pass retries.
        if their_positions is not None and repair.positions(tx.conn) != their_positions:
            return None
        return repair.merge(tx, key, rows, gone, store.clock, bodies, their_highest)

    merged = await store._write(job)
    if merged is None:
        log.debug("anti-entropy: %s/%s differs from %s while records are in flight; the log "
                  "settles it first", key[0], key[1], peer)
        return False
    if merged.changed:
        log.warning("anti-entropy: %s/%s differed from %s; repaired: %d added, %d removed, "
                    "%d flag change(s)", key[0], key[1], peer, merged.added, merged.removed,
                    merged.flags)
    return merged.changed
