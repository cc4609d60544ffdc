"""Divergence found by content, repaired by state (the store half of anti-entropy).

Log positions say which records a peer holds, not whether its mailboxes look like ours: a record
applied under a rule that later changed, a lost log, a bug — any of these leaves replicas that
differ while every backlog reads 0. So replicas also compare *content*: a digest per mailbox
over (UID, GUID, flags), then per bucket of UIDs (Merkle-style: two levels), and only the rows
of buckets that differ travel. The puller merges what it receives by the same rules as the log:
a message it lacks is added under the UID it has everywhere (unless its GUID is tombstoned
here: expunge wins), a message the peer has tombstoned goes, each flag takes the side with
the later (HLC, origin) stamp, and MODSEQs (the HLC of the latest change record that touched
the message or mailbox) take the larger side. Each node pulls from each peer, so both converge.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from mailmux.backend.store.boardflags import SHARED
from mailmux.backend.store.hlc import HybridClock
from mailmux.backend.store.interface import BOARD_OWNER
from mailmux.backend.store.writer import Tx

BUCKET = 512  # UIDs per second-level digest
MAX_ROWS = 5000  # rows in one answer; a larger difference is repaired over several passes

MailboxKey = tuple[str, str, int]  # (owner, name, uidvalidity)


@dataclass(frozen=True)
class Row:
    uid: int
    guid: str
    flags: str
    body: str
    internaldate: str
    size: int
    modseq: int
    stamps: tuple[tuple[str, int, str, int], ...]  # (flag, hlc, origin, present)

    def to_json(self) -> list[Any]:
        return [self.uid, self.guid, self.flags, self.body, self.internaldate, self.size,
                self.modseq, [list(s) for s in self.stamps]]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Row:
        uid, guid, flags, body, internaldate, size, modseq, stamps = raw
        return cls(int(uid), str(guid), str(flags), str(body), str(internaldate), int(size),
                   int(modseq), tuple((str(f), int(h), str(o), int(p)) for f, h, o, p in stamps))


def _key_text(key: MailboxKey) -> str:
    return f"{key[0]}\0{key[1]}\0{key[2]}"


def key_from_text(text: str) -> MailboxKey:
    owner, name, uidvalidity = text.split("\0")
    return owner, name, int(uidvalidity)


def _hash_rows(rows: list[tuple[int, str, str, int]], highest: int | None = None) -> str:
    h = hashlib.sha256(f"{highest}\n".encode())
    for uid, guid, flags, modseq in rows:
        h.update(f"{uid} {guid} {' '.join(sorted(flags.split()))} {modseq}\n".encode())
    return h.hexdigest()


def _mailbox_id(conn: sqlite3.Connection, key: MailboxKey) -> int | None:
    row = conn.execute("SELECT id FROM mailboxes WHERE owner = ? AND name = ? AND uidvalidity = ?",
                       key).fetchone()
    return int(row[0]) if row else None


def digests(conn: sqlite3.Connection) -> dict[str, str]:
    """First level: one digest per mailbox (keyed by owner, name, UIDVALIDITY)."""
    out: dict[str, str] = {}
    for mailbox_id, owner, name, uidvalidity, highest in conn.execute(
        "SELECT id, owner, name, uidvalidity, highestmodseq FROM mailboxes"
    ).fetchall():
        rows = conn.execute("SELECT uid, guid, flags, modseq FROM messages WHERE mailbox_id = ? "
                            "ORDER BY uid", (mailbox_id,)).fetchall()
        out[_key_text((owner, name, uidvalidity))] = _hash_rows(rows, highest)
    return out


def buckets(conn: sqlite3.Connection, key: MailboxKey) -> dict[int, str]:
    """Second level: a digest per bucket of BUCKET UIDs of one mailbox."""
    mailbox_id = _mailbox_id(conn, key)
    if mailbox_id is None:
        return {}
    grouped: dict[int, list[tuple[int, str, str, int]]] = {}
    for uid, guid, flags, modseq in conn.execute(
        "SELECT uid, guid, flags, modseq FROM messages WHERE mailbox_id = ? ORDER BY uid",
        (mailbox_id,),
    ):
        grouped.setdefault(uid // BUCKET, []).append((uid, guid, flags, modseq))
    return {b: _hash_rows(rows) for b, rows in grouped.items()}


def rows(conn: sqlite3.Connection, key: MailboxKey, wanted: list[int]) -> list[Row]:
    """The full rows (with flag stamps) of some buckets of one mailbox."""
    mailbox_id = _mailbox_id(conn, key)
    if mailbox_id is None:
        return []
    out: list[Row] = []
    for bucket in sorted(set(wanted)):
        for uid, guid, flags, body, internaldate, size, modseq in conn.execute(
            "SELECT uid, guid, flags, body_hash, internaldate, size, modseq FROM messages "
            "WHERE mailbox_id = ? AND uid >= ? AND uid < ? ORDER BY uid",
            (mailbox_id, bucket * BUCKET, (bucket + 1) * BUCKET),
        ).fetchall():
            stamps = tuple((str(f), int(h), str(o), int(p)) for f, h, o, p in conn.execute(
                "SELECT flag, hlc, origin, present FROM flag_stamps WHERE mailbox_id = ? AND "
                "guid = ?", (mailbox_id, guid)).fetchall())
            out.append(Row(uid, guid, flags, body, internaldate, size, modseq, stamps))
            if len(out) >= MAX_ROWS:
                return out
    return out


def positions(conn: sqlite3.Connection) -> dict[str, int]:
    """The highest sequence held per origin: which change records this replica holds."""
    return {str(origin): int(seq) for origin, seq in conn.execute(
        "SELECT origin, max(seq) FROM changelog GROUP BY origin")}


def highest(conn: sqlite3.Connection, key: MailboxKey) -> int:
    row = conn.execute("SELECT highestmodseq FROM mailboxes WHERE owner = ? AND name = ? AND "
                       "uidvalidity = ?", key).fetchone()
    return int(row[0]) if row else 0


def tombstoned(conn: sqlite3.Connection, key: MailboxKey, guids: list[str]) -> list[str]:
    return [g for g in guids if conn.execute(
        "SELECT 1 FROM tombstones WHERE owner = ? AND mailbox = ? AND guid = ?",
        (key[0], key[1], g)).fetchone()]


def missing_bodies(conn: sqlite3.Connection, hashes: list[str]) -> list[str]:
    return [h for h in set(hashes)
            if conn.execute("SELECT 1 FROM bodies WHERE hash = ?", (h,)).fetchone() is None]


@dataclass
class Merged:
    added: int = 0
    removed: int = 0
    flags: int = 0  # messages whose flags or MODSEQ changed
    highest: bool = False  # the mailbox's HIGHESTMODSEQ rose

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.flags or self.highest)


def merge(tx: Tx, key: MailboxKey, theirs: list[Row], gone: list[str], clock: HybridClock,
          bodies: dict[str, bytes], their_highest: int) -> Merged:
    """Merge a peer's rows (and the GUIDs it has tombstoned) into one local mailbox."""
    conn = tx.conn
    hlc = clock.now()
    visible: list[str] = []  # GUIDs added or whose flags changed here
    result = Merged()
    mailbox_id = _mailbox_id(conn, key)
    if mailbox_id is None:
        return result  # mailbox-level differences are the change log's business
    for guid in gone:
        removed = conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND guid = ? "
                               "RETURNING uid", (mailbox_id, guid)).fetchone()
        conn.execute("INSERT INTO tombstones VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (key[0], key[1], guid, hlc))
        if removed is not None:
            result.removed += 1
    for row in theirs:
        mine = conn.execute("SELECT uid, flags FROM messages WHERE mailbox_id = ? AND guid = ?",
                            (mailbox_id, row.guid)).fetchone()
        if mine is None:
            if _add(conn, key, mailbox_id, row, bodies):
                result.added += 1
                visible.append(row.guid)
            continue
        if int(mine[0]) != row.uid:
            continue  # renumbered on one side (legacy conflict rule): the log settles it
        flags = set(str(mine[1]).split())
        if key[0] == BOARD_OWNER:
            # A board post's own flags are the shared ones; stamps of readers' own flags
            # (older nodes stamped them here) must not make a reader's flag everyone's.
            row = replace(row, stamps=tuple(s for s in row.stamps if s[0] in SHARED))
        if _merge_flags(conn, mailbox_id, row, flags):
            result.flags += 1
            if flags != set(str(mine[1]).split()):
                visible.append(row.guid)
    before = highest(conn, key)
    after = max(before, their_highest, *(r.modseq for r in theirs))
    if visible or result.removed:
        # What sessions here must notice needs a MODSEQ above what they know (they catch up
        # from it); the peer then takes this larger value on its next pass.
        after = clock.update(after)
        for guid in visible:
            conn.execute("UPDATE messages SET modseq = ? WHERE mailbox_id = ? AND guid = ?",
                         (after, mailbox_id, guid))
    else:
        clock.update(after)
    result.highest = after != before
    conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (after, mailbox_id))
    if result.changed:
        tx.touched.add(mailbox_id)
    return result


def _add(conn: sqlite3.Connection, key: MailboxKey, mailbox_id: int, row: Row,
         bodies: dict[str, bytes]) -> bool:
    if conn.execute("SELECT 1 FROM tombstones WHERE owner = ? AND mailbox = ? AND guid = ?",
                    (key[0], key[1], row.guid)).fetchone():
        return False  # expunge wins
    if conn.execute("SELECT 1 FROM messages WHERE mailbox_id = ? AND uid = ?",
                    (mailbox_id, row.uid)).fetchone():
        return False  # that UID names another message here: never give it a second one
    if conn.execute("SELECT 1 FROM bodies WHERE hash = ?", (row.body,)).fetchone() is None:
        body = bodies.get(row.body)
        if body is None:
            return False
        conn.execute("INSERT OR IGNORE INTO bodies VALUES (?, ?)", (row.body, body))
    conn.execute("UPDATE mailboxes SET uidnext = max(uidnext, ?) WHERE id = ?",
                 (row.uid + 1, mailbox_id))
    conn.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (mailbox_id, row.uid, row.guid, row.body, row.internaldate, row.size,
                  row.flags, row.modseq))
    for flag, hlc, origin, present in row.stamps:
        conn.execute("INSERT OR REPLACE INTO flag_stamps VALUES (?, ?, ?, ?, ?, ?)",
                     (mailbox_id, row.guid, flag, hlc, origin, present))
    return True


def _merge_flags(conn: sqlite3.Connection, mailbox_id: int, row: Row, flags: set[str]) -> bool:
    before = set(flags)
    old_modseq = conn.execute("SELECT modseq FROM messages WHERE mailbox_id = ? AND guid = ?",
                              (mailbox_id, row.guid)).fetchone()[0]
    for flag, hlc, origin, present in row.stamps:
        stamp = conn.execute(
            "SELECT hlc, origin, present FROM flag_stamps WHERE mailbox_id = ? AND guid = ? "
            "AND flag = ?", (mailbox_id, row.guid, flag)).fetchone()
        if stamp is not None and tuple(stamp) >= (hlc, origin, present):
            present = int(stamp[2])  # ours wins; still make the flag agree with it
        else:
            conn.execute("INSERT OR REPLACE INTO flag_stamps VALUES (?, ?, ?, ?, ?, ?)",
                         (mailbox_id, row.guid, flag, hlc, origin, present))
        if present:
            flags.add(flag)
        else:
            flags.discard(flag)
    if flags == before and old_modseq >= row.modseq:
        return False
    conn.execute("UPDATE messages SET flags = ?, modseq = max(modseq, ?) WHERE mailbox_id = ? "
                 "AND guid = ?", (" ".join(sorted(flags)), row.modseq, mailbox_id, row.guid))
    return True
