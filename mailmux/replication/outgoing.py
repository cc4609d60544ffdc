"""Reading what a link ships next, on the event loop when it is small.

A W=2 change waits for its round trip, and every hop to a worker thread on the way adds a
wake-up (much of the cost on a busy machine). The common case — a link that is keeping up — ships
a few records with small bodies: those are read by primary key on the event loop's connection
(`SqliteStore._read_inline`). A link with a backlog, or a large body, is read in a worker thread
as before.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from mailmux.backend.store.interface import ChangeRecord

INLINE_RECORDS = 32  # at most this many records are read on the event loop at once
INLINE_BODY_BYTES = 256 * 1024  # bodies larger than this are read in a worker thread


def records_after(conn: sqlite3.Connection, origins: Iterable[str], sent: dict[str, int],
                  limit: int = INLINE_RECORDS) -> list[ChangeRecord]:
    """Records beyond `sent` for the known origins, oldest first per origin, by key."""
    out: list[ChangeRecord] = []
    for origin in sorted(origins):
        rows = conn.execute(
            "SELECT origin, seq, hlc, kind, payload FROM changelog "
            "WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
            (origin, sent.get(origin, 0), limit - len(out))).fetchall()
        out += [ChangeRecord(o, s, h, k, json.loads(p)) for o, s, h, k, p in rows]
        if len(out) >= limit:
            break
    return out


def small_bodies(conn: sqlite3.Connection, hashes: Iterable[str]) -> dict[str, bytes]:
    """The bodies of `hashes` that are small enough to read on the event loop."""
    found = {}
    for digest in set(hashes):
        row = conn.execute("SELECT data FROM bodies WHERE hash = ? AND length(data) <= ?",
                           (digest, INLINE_BODY_BYTES)).fetchone()
        if row is not None:
            found[digest] = bytes(row[0])
    return found
