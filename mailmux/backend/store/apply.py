"""Applying change records that arrived from peers (the receiving half of replication).

Records keep their origin and sequence: each is stored in the local change log as it came, so
(a) a record is applied at most once, whatever the number of deliveries, and (b) this node can
pass other origins' history on to a peer that lacks it (a wiped node catches up from anyone).

Rules (docs/consistency.md): a message keeps the UID its origin gave it. Each node gives out
only the UIDs in its own residue class (index modulo pool size), so two nodes never give one
UID to two messages; the dsync-style renumbering below remains only for a pool whose
membership changed under a message in flight. Flags merge per flag by the latest (HLC, origin)
stamp. GUIDs name message instances, so an expunge leaves a tombstone that wins, forever, over
any flag change or late copy of that message.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from mailmux.backend.store import boardflags, gatewaykeys, replay, statesync
from mailmux.backend.store.interface import BOARD_OWNER, ChangeRecord
from mailmux.backend.store.schema import SUBTREE
from mailmux.backend.store.writer import Tx
from mailmux.outbound import records as outbound_records

if TYPE_CHECKING:
    from mailmux.backend.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


def apply_records(store: SqliteStore, tx: Tx, records: list[ChangeRecord],
                  bodies: dict[str, bytes], indexes: dict[str, Any] | None = None) -> int:
    """`indexes`: the bodies' SEARCH index entries (`IndexEntry` by hash), computed before
    the transaction so that parsing messages does not hold the writer; any missing one is
    computed here."""
    applied = 0
    conn = tx.conn
    tx.bodies = bodies
    tx.indexes = indexes or {}
    for record in records:
        if conn.execute("SELECT 1 FROM changelog WHERE origin = ? AND seq = ?",
                        (record.origin, record.seq)).fetchone():
            continue
        conn.execute(
            "INSERT INTO changelog VALUES (?, ?, ?, ?, ?)",
            (record.origin, record.seq, record.hlc, record.kind,
             json.dumps(record.payload, sort_keys=True)),
        )
        store.clock.update(record.hlc)
        handler = _HANDLERS.get(record.kind)
        if handler is not None:
            # A record older than what last set its register (users, mailboxes,
            # subscriptions: statesync.py) arrived late: applying it would undo a later change.
            if statesync.before(conn, record.kind, record.payload, record.hlc, record.origin):
                handler(store, tx, record)
                statesync.after(conn, record.kind, record.payload, record.hlc, record.origin)
        elif record.kind in outbound_records.KINDS:
            outbound_records.apply(conn, record.kind, record.payload, bodies)
        applied += 1
    return applied


def _p(record: ChangeRecord, key: str) -> Any:
    return record.payload.get(key)


def _mailbox(conn: sqlite3.Connection, owner: str, name: str) -> tuple[Any, ...] | None:
    row = conn.execute(
        "SELECT id, owner, name, uidvalidity, uidnext, highestmodseq, special_use "
        "FROM mailboxes WHERE owner = ? AND name = ?", (owner, name)).fetchone()
    return tuple(row) if row else None


# --- users and mailboxes ------------------------------------------------------------------


def _user_add(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    tx.conn.execute("INSERT OR IGNORE INTO users VALUES (?, ?, ?)",
                    (_p(record, "user"), _p(record, "hash"), record.hlc >> 16))


def _user_passwd(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    tx.conn.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                    (_p(record, "hash"), _p(record, "user")))


def _user_del(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    user = _p(record, "user")
    for (mailbox_id,) in tx.conn.execute("SELECT id FROM mailboxes WHERE owner = ?",
                                         (user,)).fetchall():
        tx.touched.add(mailbox_id)
    for table, column in (("users", "name"), ("mailboxes", "owner"), ("subscriptions", "user"),
                          ("board_seen", "user"), ("board_flags", "user")):
        tx.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (user,))


def _mailbox_create(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    owner, name = _p(record, "owner"), _p(record, "name")
    if _mailbox(tx.conn, owner, name) is not None:
        return
    tx.conn.execute(
        "INSERT INTO mailboxes (owner, name, uidvalidity, special_use) VALUES (?, ?, ?, ?)",
        (owner, name, _p(record, "uidvalidity"), _p(record, "special_use")),
    )
    # records written before "subscribed" was logged came from a CREATE that subscribed
    if owner != BOARD_OWNER and record.payload.get("subscribed", True):
        tx.conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?, ?)", (owner, name))


def _mailbox_delete(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    row = _mailbox(tx.conn, _p(record, "owner"), _p(record, "name"))
    if row is not None and row[3] == _p(record, "uidvalidity"):
        tx.conn.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))
        tx.touched.add(row[0])


def _mailbox_rename(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    owner, old, new = _p(record, "owner"), _p(record, "old"), _p(record, "new")
    if old == "INBOX":
        return  # RENAME INBOX is logged as a create plus message moves
    for mailbox_id, name in tx.conn.execute(SUBTREE, (owner, old, old + "/")).fetchall():
        renamed = new + name[len(old):]
        moved = tx.conn.execute("UPDATE OR IGNORE mailboxes SET name = ? WHERE id = ?",
                                (renamed, mailbox_id)).rowcount
        if moved:  # the subscription follows, as where the rename was made
            tx.conn.execute("UPDATE OR IGNORE subscriptions SET name = ? WHERE user = ? AND "
                            "name = ?", (renamed, owner, name))


def _subscribe(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    if _p(record, "subscribed"):
        tx.conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?, ?)",
                        (_p(record, "user"), _p(record, "name")))
    else:
        tx.conn.execute("DELETE FROM subscriptions WHERE user = ? AND name = ?",
                        (_p(record, "user"), _p(record, "name")))


# --- messages -------------------------------------------------------------------------------


def _message_add(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    conn = tx.conn
    owner, name, guid = _p(record, "owner"), _p(record, "mailbox"), _p(record, "guid")
    mailbox = _mailbox(conn, owner, name)
    if mailbox is None or mailbox[3] != _p(record, "uidvalidity"):
        return  # the mailbox is gone, or is another incarnation: nothing to add to
    if conn.execute("SELECT 1 FROM tombstones WHERE owner = ? AND mailbox = ? AND guid = ?",
                    (owner, name, guid)).fetchone():
        # A GUID names one message instance (never its content), and an expunged message
        # never comes back: whatever copy of the add arrives later, renumbered or relayed.
        return
    held = conn.execute("SELECT uid FROM messages WHERE mailbox_id = ? AND guid = ?",
                        (mailbox[0], guid)).fetchone()
    if held is not None:
        if record.payload.get("moved") and int(held[0]) != int(_p(record, "uid")):
            _move(conn, tx, mailbox[0], int(held[0]), int(_p(record, "uid")))
        return
    body_hash = _p(record, "body")
    if body_hash not in bodies_present(conn, [body_hash]):
        body = tx.bodies.get(body_hash)
        if body is None:
            return  # expunged at the origin before it shipped: a later expunge follows
        conn.execute("INSERT OR IGNORE INTO bodies VALUES (?, ?)", (body_hash, body))
        store.index_body(conn, body_hash, body, tx.indexes.get(body_hash))
    uid = int(_p(record, "uid"))
    taken = conn.execute("SELECT guid FROM messages WHERE mailbox_id = ? AND uid = ?",
                         (mailbox[0], uid)).fetchone()
    if taken is not None:
        if _by_epoch(store, tx, mailbox, uid, str(taken[0]), record):
            return
        _resolve_uid_conflict(store, tx, mailbox, uid, str(taken[0]), record)
        return
    _insert(conn, tx, mailbox[0], uid, guid, body_hash, _p(record, "internaldate"),
            _p(record, "size"), _p(record, "flags"),
            _modseq(store, conn, mailbox[0], record.hlc, record))


def _epoch_of(conn: sqlite3.Connection, guid: str) -> int | None:
    """The home epoch under which a message was added (None: no epoch known)."""
    row = conn.execute(
        "SELECT max(json_extract(payload, '$.epoch')) FROM changelog WHERE kind = 'message.add' "
        "AND json_extract(payload, '$.guid') = ?", (guid,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _by_epoch(store: SqliteStore, tx: Tx, mailbox: tuple[Any, ...], uid: int, local_guid: str,
              record: ChangeRecord) -> bool:
    """Two homes gave one UID to two messages (a deposed home's unacknowledged add, made
    after the new home caught up). The newer epoch's message keeps the UID, since a client of
    the current home may have seen it; the older one is given a new UID by the current home
    alone (renumbering anywhere else would give different UIDs on different replicas), and the
    other replicas just set it aside until that renumbered add arrives."""
    incoming = record.payload.get("epoch")
    local = _epoch_of(tx.conn, local_guid)
    if str(mailbox[1]) == BOARD_OWNER or not incoming or local is None or incoming == local:
        return False
    conn, mailbox_id, owner = tx.conn, int(mailbox[0]), str(mailbox[1])
    home = store.home_now(owner)
    if int(str(incoming)) > local:
        row = conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ? RETURNING "
                           "body_hash, internaldate, size, flags", (mailbox_id, uid)).fetchone()
        _insert(conn, tx, mailbox_id, uid, str(_p(record, "guid")), _p(record, "body"),
                _p(record, "internaldate"), _p(record, "size"), _p(record, "flags"),
                _modseq(store, conn, mailbox_id, record.hlc, record))
        loser = (local_guid, row[0], row[1], row[2], str(row[3]).split())
    else:
        loser = (str(_p(record, "guid")), _p(record, "body"), _p(record, "internaldate"),
                 _p(record, "size"), list(_p(record, "flags")))
    if home:
        _renumber(store, tx, mailbox, *loser)
    return True


def _renumber(store: SqliteStore, tx: Tx, mailbox: tuple[Any, ...], guid: str, body_hash: str,
              internaldate: str, size: int, flags: list[str]) -> None:
    conn = tx.conn
    mailbox_id = int(mailbox[0])
    (new_uid,) = conn.execute("SELECT uidnext FROM mailboxes WHERE id = ?",
                              (mailbox_id,)).fetchone()
    modseq = store.clock.now()
    _insert(conn, tx, mailbox_id, int(new_uid), guid, body_hash, internaldate, size, flags,
            modseq)
    store._log(tx, "message.add", {
        "owner": mailbox[1], "mailbox": mailbox[2], "uidvalidity": mailbox[3],
        "uid": int(new_uid), "uidnext": int(new_uid) + 1, "guid": guid, "flags": sorted(flags),
        "internaldate": internaldate, "body": body_hash, "size": size, "moved": True,
        "epoch": store.home_epoch(str(mailbox[1])),
    }, hlc=modseq)


def _move(conn: sqlite3.Connection, tx: Tx, mailbox_id: int, old: int, new: int) -> None:
    """The home renumbered a message this replica holds under its old UID."""
    if conn.execute("SELECT 1 FROM messages WHERE mailbox_id = ? AND uid = ?",
                    (mailbox_id, new)).fetchone():
        return
    conn.execute("UPDATE messages SET uid = ? WHERE mailbox_id = ? AND uid = ?",
                 (new, mailbox_id, old))
    conn.execute("UPDATE mailboxes SET uidnext = max(uidnext, ?) WHERE id = ?",
                 (new + 1, mailbox_id))
    tx.touched.add(mailbox_id)


def _modseq(store: SqliteStore, conn: sqlite3.Connection, mailbox_id: int, hlc: int,
            record: ChangeRecord | None = None) -> int:
    """The MODSEQ a replicated change gets here: its record's HLC, verbatim, whenever it is
    above the mailbox's HIGHESTMODSEQ (always so when one node at a time changes a mailbox),
    or equal to it as the next record of the same change (a STORE or EXPUNGE of several
    messages logs one record per message, all with the change's one MODSEQ; a batch never
    splits them, see `SqliteStore.changes_after`). A change made concurrently elsewhere can
    arrive below it; it then gets a fresh local value above, or the sessions open here (which
    catch up from the MODSEQ they know) would never see it. Anti-entropy later settles both
    replicas on the larger value."""
    highest = int(conn.execute("SELECT highestmodseq FROM mailboxes WHERE id = ?",
                               (mailbox_id,)).fetchone()[0])
    if hlc > highest or (hlc == highest and record is not None and _same_change(conn, record)):
        return hlc
    return store.clock.update(highest)


def _same_change(conn: sqlite3.Connection, record: ChangeRecord) -> bool:
    """The record before this one from its origin is part of the same change (same HLC)."""
    row = conn.execute("SELECT hlc FROM changelog WHERE origin = ? AND seq = ?",
                       (record.origin, record.seq - 1)).fetchone()
    return row is not None and int(row[0]) == record.hlc


def bodies_present(conn: sqlite3.Connection, hashes: list[str]) -> set[str]:
    return {h for h in hashes
            if conn.execute("SELECT 1 FROM bodies WHERE hash = ?", (h,)).fetchone()}


def _insert(conn: sqlite3.Connection, tx: Tx, mailbox_id: int, uid: int, guid: str,
            body_hash: str, internaldate: str, size: int, flags: list[str],
            modseq: int) -> None:
    """Add a message with its origin's UID and MODSEQ (the add record's HLC), verbatim."""
    (uidvalidity,) = conn.execute(
        "UPDATE mailboxes SET uidnext = max(uidnext, ?), highestmodseq = max(highestmodseq, ?) "
        "WHERE id = ? RETURNING uidvalidity", (uid + 1, modseq, mailbox_id)).fetchone()
    conn.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (mailbox_id, uid, guid, body_hash, internaldate, size,
                  " ".join(sorted(flags)), modseq))
    tx.touched.add(mailbox_id)
    key = (mailbox_id, uidvalidity)
    tx.arrived[key] = max(uid, tx.arrived.get(key, 0))


def _resolve_uid_conflict(store: SqliteStore, tx: Tx, mailbox: tuple[Any, ...], uid: int,
                          local_guid: str, record: ChangeRecord) -> None:
    """Both messages get fresh UIDs above both UIDNEXTs, smaller GUID first (as dsync)."""
    conn = tx.conn
    mailbox_id = mailbox[0]
    local = conn.execute(
        "SELECT body_hash, internaldate, size, flags FROM messages "
        "WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)).fetchone()
    remote_guid = str(_p(record, "guid"))
    base = max(int(mailbox[4]), uid + 1, int(_p(record, "uidnext") or 0))
    incoming = {
        local_guid: (local[0], local[1], local[2], local[3].split()),
        remote_guid: (_p(record, "body"), _p(record, "internaldate"), _p(record, "size"),
                      _p(record, "flags")),
    }
    conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid))
    owner, name = str(mailbox[1]), str(mailbox[2])
    store._log(tx, "message.expunge", {"owner": owner, "mailbox": name, "uid": uid,
                                       "guid": local_guid, "renumbered": True})
    for offset, guid in enumerate(sorted(incoming)):
        body_hash, internaldate, size, flags = incoming[guid]
        new_uid = base + offset
        modseq = store.clock.now()
        _insert(conn, tx, mailbox_id, new_uid, guid, body_hash, internaldate, size, flags,
                modseq)
        store._log(tx, "message.add", {
            "owner": owner, "mailbox": name, "uidvalidity": mailbox[3], "uid": new_uid,
            "uidnext": base + len(incoming), "guid": guid, "flags": sorted(flags),
            "internaldate": internaldate, "body": body_hash, "size": size,
        }, hlc=modseq)


def _message_flags(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    conn = tx.conn
    mailbox = _mailbox(conn, _p(record, "owner"), _p(record, "mailbox"))
    if mailbox is None:
        return
    guid = _p(record, "guid")
    row = conn.execute("SELECT uid, flags FROM messages WHERE mailbox_id = ? AND guid = ?",
                       (mailbox[0], guid)).fetchone()
    if row is None:
        return  # expunged: the expunge wins
    uid, flags = row[0], set(row[1].split())
    user = _p(record, "user")
    changes = [(f, 1) for f in _p(record, "added") or []] + [
        (f, 0) for f in _p(record, "removed") or []]
    for flag, present in changes:
        if user is not None and flag not in boardflags.SHARED:  # a board reader's own flag
            if not statesync.newer(conn, statesync.BFLAG, statesync.bflag_key(
                    str(user), str(mailbox[2]), str(guid), flag), record.hlc, record.origin,
                    bool(present)):
                continue  # a later change of this reader's flag is already here
            mine = frozenset({flag})
            boardflags.set_private(conn, user, mailbox[0], uid, mine if present else frozenset(),
                                   frozenset() if present else mine)
            continue
        stamp = conn.execute(
            "SELECT hlc, origin, present FROM flag_stamps WHERE mailbox_id = ? AND guid = ? "
            "AND flag = ?", (mailbox[0], guid, flag)).fetchone()
        if stamp is not None and tuple(stamp) >= (record.hlc, record.origin, present):
            continue
        conn.execute("INSERT OR REPLACE INTO flag_stamps VALUES (?, ?, ?, ?, ?, ?)",
                     (mailbox[0], guid, flag, record.hlc, record.origin, present))
        if present:
            flags.add(flag)
        else:
            flags.discard(flag)
    # The message's MODSEQ is the latest change record that touched it, whether or not that
    # record won the per-flag merge: so it is the same on every replica, whatever the order.
    modseq = _modseq(store, conn, mailbox[0], record.hlc, record)
    conn.execute("UPDATE mailboxes SET highestmodseq = max(highestmodseq, ?) WHERE id = ?",
                 (modseq, mailbox[0]))
    conn.execute("UPDATE messages SET flags = ?, modseq = max(modseq, ?) WHERE mailbox_id = ? "
                 "AND uid = ?", (" ".join(sorted(flags)), modseq, mailbox[0], uid))
    tx.touched.add(mailbox[0])


def _message_expunge(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    conn = tx.conn
    owner, name, guid = _p(record, "owner"), _p(record, "mailbox"), _p(record, "guid")
    mailbox = _mailbox(conn, owner, name)
    if mailbox is None:
        return
    if _p(record, "renumbered"):
        # Only that UID goes: the message itself lives on under its new UID.
        gone = conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ? AND guid = ? "
                            "RETURNING uid", (mailbox[0], _p(record, "uid"), guid)).fetchall()
    else:
        conn.execute(
            "INSERT INTO tombstones VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET hlc = "
            "max(hlc, excluded.hlc)", (owner, name, guid, record.hlc))
        gone = conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND guid = ? "
                            "RETURNING uid", (mailbox[0], guid)).fetchall()
    modseq = _modseq(store, conn, mailbox[0], record.hlc, record)
    conn.execute("UPDATE mailboxes SET highestmodseq = max(highestmodseq, ?) WHERE id = ?",
                 (modseq, mailbox[0]))
    # The `expunged` trigger stamped each UID HIGHESTMODSEQ + 1, a local value: the history
    # QRESYNC reads (VANISHED (EARLIER), CHANGEDSINCE) holds the change's MODSEQ, as at the home.
    conn.executemany("UPDATE expunged SET modseq = ? WHERE mailbox_id = ? AND uid = ?",
                     [(modseq, mailbox[0], uid) for uid, in gone])
    tx.touched.add(mailbox[0])


def _replay(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    answer = _p(record, "answer")
    adds = _p(record, "adds")
    run = replay.Run(record.origin, record.hlc, dict(answer) if isinstance(answer, dict) else {},
                     list(adds) if isinstance(adds, list) else [])
    key = (str(_p(record, "scope")), str(_p(record, "id")))
    met = replay.merge(tx.conn, key, run)
    if met is not None:
        _undo_run(store, tx, *met)
        log.warning("replay id %s of %s ran on %s and on %s: kept the run of %s, removed %d "
                    "message(s) of the other", key[1], key[0], met[0].origin, met[1].origin,
                    met[0].origin, len(met[1].adds))


def _undo_run(store: SqliteStore, tx: Tx, winner: replay.Run, loser: replay.Run) -> None:
    """Two runs of one replay id met: the loser's messages go, on every node alike. A GUID only
    the loser added is tombstoned (no late copy brings it back); a GUID both share (an SMTP
    replay carries its GUID) loses only the loser's UID, and the winner's add, skipped here
    while the GUID was taken, is made now."""
    conn = tx.conn
    shared = {str(p.get("guid")) for _, p in winner.adds}
    for _, payload in loser.adds:
        owner, name, guid = payload.get("owner"), payload.get("mailbox"), payload.get("guid")
        mailbox = _mailbox(conn, owner, name)
        if mailbox is None or mailbox[3] != payload.get("uidvalidity"):
            continue
        if guid in shared:
            conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ? AND guid = ?",
                         (mailbox[0], payload.get("uid"), guid))
        else:
            conn.execute("INSERT INTO tombstones VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                         "hlc = max(hlc, excluded.hlc)", (owner, name, guid, winner.hlc))
            conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND guid = ?",
                         (mailbox[0], guid))
        conn.execute("UPDATE mailboxes SET highestmodseq = max(highestmodseq, ?) WHERE id = ?",
                     (_modseq(store, conn, mailbox[0], winner.hlc), mailbox[0]))
        tx.touched.add(mailbox[0])
    for hlc, payload in winner.adds:
        if payload.get("guid") in {p.get("guid") for _, p in loser.adds}:
            _message_add(store, tx, ChangeRecord(winner.origin, 0, int(hlc), "message.add",
                                                 dict(payload)))


def _replay_forget(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    replay.forget(tx.conn, (str(_p(record, "scope")), str(_p(record, "id"))), record.origin)


def _gateway_key_add(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    gatewaykeys.apply_add(tx.conn, str(_p(record, "name")), str(_p(record, "secret")),
                          record.hlc, record.origin)


def _gateway_key_revoke(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    gatewaykeys.apply_revoke(tx.conn, str(_p(record, "name")), record.hlc, record.origin)


def _board_moderator(store: SqliteStore, tx: Tx, record: ChangeRecord) -> None:
    boardflags.apply_moderator(tx.conn, str(_p(record, "board")), str(_p(record, "user")),
                               bool(_p(record, "present")), record.hlc, record.origin)


_HANDLERS = {
    "board.moderator": _board_moderator,
    "gatewaykey.add": _gateway_key_add,
    "gatewaykey.revoke": _gateway_key_revoke,
    "replay": _replay,
    "replay.forget": _replay_forget,
    "user.add": _user_add,
    "user.passwd": _user_passwd,
    "user.del": _user_del,
    "mailbox.create": _mailbox_create,
    "board.add": _mailbox_create,
    "mailbox.delete": _mailbox_delete,
    "mailbox.rename": _mailbox_rename,
    "mailbox.subscribe": _subscribe,
    "message.add": _message_add,
    "message.flags": _message_flags,
    "message.expunge": _message_expunge,
}

