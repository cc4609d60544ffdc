"""The UIDs of recently selected mailboxes, kept between SELECTs (as Dovecot keeps its index).

A SELECT needs the mailbox's UIDs in order (its sequence numbers). Reading 100,000 of them costs
tens of milliseconds every time; keeping the last array read per mailbox, with the MODSEQ it was
read at, lets the next SELECT catch up on what changed since (new UIDs, expunged ones: the same
change feed the views use) and copy the array: a memcpy, not a scan. Entries are evicted least
recently used beyond `max_uids` UIDs in all. Callers run in the store's reader threads, inside the
read transaction that also read the mailbox's HIGHESTMODSEQ, so an entry is a consistent snapshot.
"""

from __future__ import annotations

import sqlite3
import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict

MAX_UIDS = 4_000_000  # 32 MB of UIDs at most, over all mailboxes


class UidCache:
    def __init__(self, max_uids: int = MAX_UIDS) -> None:
        self.max_uids = max_uids
        self._lock = threading.Lock()
        # (mailbox id, UIDVALIDITY): an id freed by DELETE may name a new mailbox later
        self._entries: OrderedDict[tuple[int, int], tuple[int, array[int]]] = OrderedDict()
        self._held = 0

    def uids(self, conn: sqlite3.Connection, mailbox_id: int, uidvalidity: int,
             modseq: int) -> array[int]:
        """The mailbox's UIDs at `modseq` (its HIGHESTMODSEQ in this read transaction)."""
        key = (mailbox_id, uidvalidity)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        uids = None
        if entry is not None and entry[0] <= modseq:
            uids = entry[1] if entry[0] == modseq else _caught_up(conn, mailbox_id, *entry)
        if uids is None:
            uids = _load(conn, mailbox_id)
        if entry is None or entry[0] < modseq:
            self._keep(key, modseq, uids)
        return array("q", uids)  # each view gets its own copy to change

    def current(self, mailbox_id: int, uidvalidity: int, modseq: int,
                most: int) -> array[int] | None:
        """The kept UIDs themselves (shared: never to be changed in place) when they are
        exactly those at `modseq` and at most `most` of them; None otherwise (the caller then
        reads them with `uids`, in a worker thread). No SQL and no copy, so a SELECT of a
        mailbox nobody changed since the last one is answered on the event loop."""
        key = (mailbox_id, uidvalidity)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != modseq or len(entry[1]) > most:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def _keep(self, key: tuple[int, int], modseq: int, uids: array[int]) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= len(old[1])
            if len(uids) > self.max_uids:
                return
            self._entries[key] = (modseq, uids)
            self._held += len(uids)
            while self._held > self.max_uids:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._held -= len(evicted)


def _load(conn: sqlite3.Connection, mailbox_id: int) -> array[int]:
    text = conn.execute(
        "SELECT group_concat(uid) FROM (SELECT uid FROM messages WHERE mailbox_id = ? "
        "ORDER BY uid)", (mailbox_id,)).fetchone()[0]
    return array("q", map(int, text.split(","))) if text else array("q")


def _caught_up(conn: sqlite3.Connection, mailbox_id: int, modseq: int,
               uids: array[int]) -> array[int] | None:
    """`uids` advanced from `modseq` to now; None when a full read is as cheap or needed."""
    limit = max(64, len(uids) // 8)
    changed = [r[0] for r in conn.execute(
        # INDEXED BY: for ORDER BY uid the planner would walk the covering (mailbox_id, uid,
        # flags, modseq) index over the whole mailbox instead of the few changed rows
        "SELECT uid FROM messages INDEXED BY messages_modseq WHERE mailbox_id = ? "
        "AND modseq > ? ORDER BY uid LIMIT ?",
        (mailbox_id, modseq, limit + 1))]
    gone = {r[0] for r in conn.execute(
        "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? LIMIT ?",
        (mailbox_id, modseq, limit + 1))}
    if len(changed) > limit or len(gone) > limit:
        return None
    last = uids[-1] if uids else 0
    for uid in changed:
        if uid <= last:
            i = bisect_left(uids, uid)
            if i == len(uids) or uids[i] != uid:
                return None  # a UID below the last that this array never had (renumbering)
    out = array("q", (u for u in uids if u not in gone)) if gone else array("q", uids)
    out.extend(u for u in changed if u > last)
    return out
