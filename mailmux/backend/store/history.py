"""The QRESYNC history (`expunged`: UID and MODSEQ of each expunge) kept bounded.

Entries older than `expunged_keep`, and beyond the `expunged_max` newest of a mailbox, are
pruned; the mailbox then remembers the highest MODSEQ pruned (`expunged_horizon`). A question
about changes since a MODSEQ below that horizon can no longer be answered from the history, so
it is answered from the mailbox itself: every UID below UIDNEXT that the mailbox does not hold
is reported expunged (RFC 7162 lets VANISHED (EARLIER) name UIDs the client never saw; the
sessions keep only the UIDs they know). That costs what the unpruned history cost, and only
for a client that was away longer than the window.
"""

from __future__ import annotations

import sqlite3

PRUNE_BATCH = 1000  # rows per transaction: the writer is never held long


def vanished_since_horizon(conn: sqlite3.Connection, mailbox_id: int,
                           uidnext: int) -> tuple[int, ...]:
    """Every UID below UIDNEXT the mailbox does not hold (the history was pruned)."""
    held = {int(r[0]) for r in conn.execute("SELECT uid FROM messages WHERE mailbox_id = ?",
                                            (mailbox_id,))}
    return tuple(u for u in range(1, uidnext) if u not in held)


def _forget(conn: sqlite3.Connection, rows: list[tuple[int, int, int]]) -> int:
    for mailbox_id, uid, _ in rows:
        conn.execute("DELETE FROM expunged WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid))
    tops: dict[int, int] = {}
    for mailbox_id, _, modseq in rows:
        tops[mailbox_id] = max(tops.get(mailbox_id, 0), modseq)
    for mailbox_id, modseq in tops.items():
        conn.execute("INSERT INTO expunged_horizon VALUES (?, ?) ON CONFLICT (mailbox_id) DO "
                     "UPDATE SET modseq = max(modseq, excluded.modseq)", (mailbox_id, modseq))
    return len(rows)


def prune(conn: sqlite3.Connection, older_than: int, keep: int) -> int:
    """One batch: entries with a MODSEQ (an HLC) below `older_than`, then a mailbox's entries
    beyond its `keep` newest. Returns the entries removed (0: nothing left to prune)."""
    rows = [(int(m), int(u), int(s)) for m, u, s in conn.execute(
        "SELECT mailbox_id, uid, modseq FROM expunged WHERE modseq < ? LIMIT ?",
        (older_than, PRUNE_BATCH))]
    if rows:
        return _forget(conn, rows)
    for mailbox_id, count in conn.execute(
            "SELECT mailbox_id, count(*) FROM expunged GROUP BY mailbox_id HAVING count(*) > ?",
            (keep,)).fetchall():
        rows = [(int(mailbox_id), int(u), int(s)) for u, s in conn.execute(
            "SELECT uid, modseq FROM expunged INDEXED BY expunged_modseq WHERE mailbox_id = ? "
            "ORDER BY modseq LIMIT ?", (mailbox_id, min(PRUNE_BATCH, int(count) - keep)))]
        return _forget(conn, rows)
    return 0
