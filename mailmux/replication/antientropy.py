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
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from mailmux.backend.store import repair, statesync
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.backend.store.writer import Tx

log = logging.getLogger(__name__)

DIGEST_INTERVAL = 10.0
# The state besides messages changes rarely and costs more to digest (a row per user, mailbox,
# subscription...): compared on every (re)connection, then this often.
STATE_INTERVAL = 60.0
STATE_DIGEST_MAX_AGE = 60.0
_digest_cache: weakref.WeakKeyDictionary[
    SqliteStore, dict[tuple[str, ...], tuple[int, float, dict[str, str]]]
] = weakref.WeakKeyDictionary()
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
    if kind == "state.digests":
        kinds = tuple(str(k) for k in message.get("k") or statesync.KINDS)
        return {"t": kind, "d": await state_digests(store, kinds)}
    if kind == "state.buckets":
        which = _kind(message)
        return {"t": kind, "b": await store._read(lambda c: statesync.buckets(c, which))}
    if kind == "state.rows":
        which = _kind(message)
        buckets = [str(b) for b in message["b"]][:256]
        return {"t": kind, "r": await store._read(lambda c: statesync.rows(c, which, buckets))}
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


def _kind(message: dict[str, Any]) -> str:
    which = str(message.get("k"))
    if which not in statesync.KINDS:
        raise KeyError(f"no state kind {which!r}")
    return which


async def reconcile(store: SqliteStore, ask: Ask, peer: str, state: bool = True) -> int:
    """Pull and merge whatever differs from `peer`; returns the mailboxes and state kinds
    repaired. Users, mailboxes and subscriptions first (messages need their mailbox), then
    the messages, then what names messages (readers' board flags) and the rest."""
    repaired = await _state(store, ask, peer, statesync.EARLY) if state else 0
    mine = await store._read(repair.digests)
    theirs = (await ask({"t": "digests"}))["d"]
    for text in sorted(set(mine) & set(theirs)):
        if mine[text] != theirs[text] and await _mailbox(store, ask, text, peer):
            repaired += 1
    return repaired + (await _state(store, ask, peer, statesync.LATE) if state else 0)


async def state_digests(store: SqliteStore, kinds: tuple[str, ...]) -> dict[str, str]:
    """The per-kind digests, computed again only after a commit of this node's (or after
    STATE_DIGEST_MAX_AGE, for what another process, such as the CLI, wrote): every peer asks
    for them, and every pass compares them, so an idle pool does not rehash its state."""
    commits, now = store.commits, time.monotonic()
    cache = _digest_cache.setdefault(store, {})
    held = cache.get(kinds)
    if held is not None and held[0] == commits and now - held[1] < STATE_DIGEST_MAX_AGE:
        return held[2]
    digests = await store._read(lambda c: statesync.digests(c, kinds))
    cache[kinds] = (commits, now, digests)
    return digests


async def _state(store: SqliteStore, ask: Ask, peer: str, kinds: tuple[str, ...]) -> int:
    mine = await state_digests(store, kinds)
    theirs = (await ask({"t": "state.digests", "k": list(kinds)}))["d"]
    repaired = 0
    for which in kinds:
        if which in theirs and mine.get(which) != theirs[which]:
            repaired += await _kind_pass(store, ask, peer, which)
    return repaired


async def _kind_pass(store: SqliteStore, ask: Ask, peer: str, which: str) -> int:
    mine = await store._read(lambda c: statesync.buckets(c, which))
    theirs = (await ask({"t": "state.buckets", "k": which}))["b"]
    differ = sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))
    if not differ:
        return 0
    rows = (await ask({"t": "state.rows", "k": which, "b": differ}))["r"]
    need = await store._read(lambda c: statesync.bodies_wanted(c, which, rows))
    bodies: dict[str, bytes] = {}
    if need:
        raw = (await ask({"t": "bodies", "h": need}))["b"]
        bodies = {h: base64.b64decode(b) for h, b in raw.items()}
    changed = await store._write(
        lambda tx: statesync.merge(tx, which, rows, bodies, store.clock))
    if not changed:
        return 0
    log.warning("anti-entropy: %d %s row(s) differed from %s; repaired", changed, which, peer)
    return 1


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
