"""Anti-entropy for the node's state besides messages: users and passwords, mailboxes (names,
UIDVALIDITY, UIDNEXT, SPECIAL-USE), subscriptions, board moderators, each board reader's own
flags, gateway keys and the outbound queue (the message half is `repair.py`).

Log positions say which records a node holds, not whether its tables still look like what
those records made: a row deleted behind the log's back, a log wiped after its records were
applied, or two records of one register applied in different orders would leave replicas that
differ for good. So every kind of state is also compared by *content*: each node renders a
kind as rows `key -> value`, hashes them (per kind, then per bucket of keys: Merkle-style, two
levels), and pulls the rows of the buckets that differ.

Every row is a register with a total order, so merging is a join (take the larger of the two)
and needs no knowledge of which side is "behind": a deletion is a row too (a tombstone), never
an absent key, and a node only ever adopts what it pulls, never removes what the peer lacks.

- Users, mailboxes, subscriptions and board readers' flags: a row is (HLC, origin, present,
  value), stamped with the change record that last set it (`state_stamps`, written by the same
  function for a local change and for a record from a peer: `before`/`after`). At equal stamps
  (a row changed behind the stamp's back) "present" wins over "absent", then the larger value:
  a lost row comes back rather than a kept row going.
- Mailbox UIDNEXT joins by max (a UID, once given, is never given again).
- Board moderators and gateway keys keep their own (HLC, origin) stamps; a revoked gateway key
  beats every live one (revocation is final).
- Outbound queue rows join as their records do (records.py): recipient states only move
  forward, attempts and warnings by max, the delivery lease by (epoch, owner), `done` wins.

Rows of users that do not exist (deleted) are not compared: a deleted user's mailboxes, flags
and subscriptions go with the user.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mailmux.backend.store import boardflags, gatewaykeys
from mailmux.backend.store.hlc import HybridClock
from mailmux.backend.store.interface import BOARD_OWNER
from mailmux.backend.store.writer import Tx
from mailmux.outbound import records as outbound_records

DDL = """
CREATE TABLE IF NOT EXISTS state_stamps (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    origin TEXT NOT NULL,
    present INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"""

SEP = "\x1f"  # unit separator: no user id, mailbox name or flag holds a control character
BUCKET_CHARS = 2  # 256 buckets per kind
MAX_ROWS = 5000  # rows in one answer; a larger difference is repaired over several passes

USER, MAILBOX, SUB, BFLAG, MODERATOR, GATEWAYKEY, OUTBOUND = (
    "user", "mailbox", "sub", "bflag", "moderator", "gatewaykey", "outbound")
# Before the message digests (a mailbox must exist before its messages can be compared)...
EARLY = (USER, GATEWAYKEY, MAILBOX, SUB)
# ...and after them (a reader's flag names a post by GUID; the post must be here first).
LATE = (MODERATOR, BFLAG, OUTBOUND)
KINDS = EARLY + LATE

Rows = dict[str, list[Any]]
Stamp = tuple[int, str, int]  # (hlc, origin, present)
NO_STAMP = (0, "")


def prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def sweep_orphans(conn: sqlite3.Connection) -> int:
    """Drop rows whose mailbox is gone: mailboxes deleted by hand with foreign keys off (the
    sqlite3 shell's default) leave them, and the next mailbox given the same id would inherit
    them. Run at start; returns the rows dropped."""
    dropped = 0
    for table in ("messages", "board_seen", "board_flags", "flag_stamps", "mailbox_counts",
                  "mailbox_keywords", "expunged", "expunged_horizon"):
        dropped += conn.execute(
            f"DELETE FROM {table} WHERE mailbox_id NOT IN (SELECT id FROM mailboxes)").rowcount
    return dropped


def key(*parts: object) -> str:
    return SEP.join(str(p) for p in parts)


# stamps -------------------------------------------------------------------------------------


def stamp_of(conn: sqlite3.Connection, kind: str, k: str) -> Stamp | None:
    row = conn.execute("SELECT hlc, origin, present FROM state_stamps WHERE kind = ? AND key = ?",
                       (kind, k)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), int(row[2]))


def newer(conn: sqlite3.Connection, kind: str, k: str, hlc: int, origin: str,
          present: bool) -> bool:
    """Whether a change stamped (hlc, origin) is later than what set this register last."""
    held = stamp_of(conn, kind, k)
    return held is None or (hlc, origin, int(present)) > held


def put(conn: sqlite3.Connection, kind: str, k: str, hlc: int, origin: str,
        present: bool) -> bool:
    """Stamp a register if the change is later than its stamp; False: an older change, which
    must not take effect."""
    held = stamp_of(conn, kind, k)
    if held is not None and (hlc, origin) < held[:2]:
        return False
    if held is None or (hlc, origin, int(present)) > held:
        _set(conn, kind, k, hlc, origin, int(present))
    return True  # the same record again (a wiped log refilled) applies again, harmlessly


def _set(conn: sqlite3.Connection, kind: str, k: str, hlc: int, origin: str,
         present: int) -> None:
    conn.execute("INSERT OR REPLACE INTO state_stamps VALUES (?, ?, ?, ?, ?)",
                 (kind, k, hlc, origin, present))


def _forget_user(conn: sqlite3.Connection, user: str) -> None:
    prefix = user + SEP
    conn.execute("DELETE FROM state_stamps WHERE kind IN (?, ?, ?) AND substr(key, 1, ?) = ?",
                 (MAILBOX, SUB, BFLAG, len(prefix), prefix))


def before(conn: sqlite3.Connection, kind: str, payload: Mapping[str, Any], hlc: int,
           origin: str) -> bool:
    """Stamp what a change record sets; False if the record is older than the register's
    stamp (a record from a peer arriving late): it must then not be applied. Called for local
    changes (always the latest) and for records from peers, so both stamp alike."""
    p = payload
    if kind in ("user.add", "user.passwd"):
        return put(conn, USER, str(p["user"]), hlc, origin, True)
    if kind == "user.del":
        if not put(conn, USER, str(p["user"]), hlc, origin, False):
            return False
        _forget_user(conn, str(p["user"]))
        return True
    if kind in ("mailbox.create", "board.add"):
        owner, name = str(p["owner"]), str(p["name"])
        if not put(conn, MAILBOX, key(owner, name, p["uidvalidity"]), hlc, origin, True):
            return False
        if owner != BOARD_OWNER and p.get("subscribed", True):
            put(conn, SUB, key(owner, name), hlc, origin, True)
        return True
    if kind == "mailbox.delete":
        return put(conn, MAILBOX, key(p["owner"], p["name"], p["uidvalidity"]), hlc, origin,
                   False)
    if kind == "mailbox.subscribe":
        return put(conn, SUB, key(p["user"], p["name"]), hlc, origin, bool(p["subscribed"]))
    return True


def after(conn: sqlite3.Connection, kind: str, payload: Mapping[str, Any], hlc: int,
          origin: str) -> None:
    """Stamps that depend on the state the change left (run after applying it)."""
    p = payload
    if kind == "mailbox.rename" and p.get("old") != "INBOX":
        owner, old, new = str(p["owner"]), str(p["old"]), str(p["new"])
        for name, uidvalidity in conn.execute(
                "SELECT name, uidvalidity FROM mailboxes WHERE owner = ? AND "
                "(name = ? OR substr(name, 1, length(?3)) = ?3)", (owner, new, new + "/")
        ).fetchall():
            was = old + str(name)[len(new):]
            put(conn, MAILBOX, key(owner, name, uidvalidity), hlc, origin, True)
            put(conn, MAILBOX, key(owner, was, uidvalidity), hlc, origin, False)
            if conn.execute("SELECT 1 FROM subscriptions WHERE user = ? AND name = ?",
                            (owner, name)).fetchone():
                put(conn, SUB, key(owner, name), hlc, origin, True)
                put(conn, SUB, key(owner, was), hlc, origin, False)
    elif kind == "message.flags" and p.get("user"):
        for flag, present in [(f, True) for f in p.get("added") or []] + [
                (f, False) for f in p.get("removed") or []]:
            if flag not in boardflags.SHARED:
                put(conn, BFLAG, bflag_key(str(p["user"]), str(p["mailbox"]), str(p["guid"]),
                                           flag), hlc, origin, present)


def bflag_key(user: str, board: str, guid: str, flag: str) -> str:
    return key(user, board, guid, flag)


# rows ---------------------------------------------------------------------------------------


def _stamps(conn: sqlite3.Connection, kind: str) -> dict[str, Stamp]:
    return {str(k): (int(h), str(o), int(p)) for k, h, o, p in conn.execute(
        "SELECT key, hlc, origin, present FROM state_stamps WHERE kind = ?", (kind,))}


def _registers(actual: Mapping[str, list[Any]], stamps: Mapping[str, Stamp],
               keep: Callable[[str], bool]) -> Rows:
    """(hlc, origin, agrees, present, *value) per key: the stamp of the change that set the
    register last, whether the table agrees with it (present where the change made it
    present, absent where it removed it), and what the table holds. A row added or removed
    behind the stamp's back disagrees, and loses to the same stamp's agreeing row."""
    out: Rows = {}
    for k in set(actual) | set(stamps):
        if not keep(k):
            continue
        held = stamps.get(k)
        hlc, origin = held[:2] if held is not None else NO_STAMP
        meant = held[2] if held is not None else None
        value = actual.get(k)
        agrees = int(meant is None or meant == int(value is not None))
        out[k] = [hlc, origin, agrees, 1, *value] if value is not None else [
            hlc, origin, agrees, 0]
    return out


def _live_users(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM users")}


def _owner_live(live: set[str]) -> Callable[[str], bool]:
    return lambda k: k.split(SEP, 1)[0] in live


def user_rows(conn: sqlite3.Connection) -> Rows:
    actual = {str(n): [str(h)] for n, h in conn.execute("SELECT name, password_hash FROM users")}
    return _registers(actual, _stamps(conn, USER), lambda k: True)


def mailbox_rows(conn: sqlite3.Connection) -> Rows:
    live = _live_users(conn) | {BOARD_OWNER}
    actual = {key(o, n, v): [str(s or ""), int(u)] for o, n, v, s, u in conn.execute(
        "SELECT owner, name, uidvalidity, special_use, uidnext FROM mailboxes")}
    return _registers(actual, _stamps(conn, MAILBOX), _owner_live(live))


def sub_rows(conn: sqlite3.Connection) -> Rows:
    actual: dict[str, list[Any]] = {
        key(u, n): [] for u, n in conn.execute("SELECT user, name FROM subscriptions")}
    return _registers(actual, _stamps(conn, SUB), _owner_live(_live_users(conn)))


def bflag_rows(conn: sqlite3.Connection) -> Rows:
    """Each board reader's own flags, by post GUID; only for posts held here (a post this node
    lacks is the message digests' business first)."""
    posts = {key(str(n), str(g)) for n, g in conn.execute(
        "SELECT b.name, m.guid FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
        "WHERE b.owner = ?", (BOARD_OWNER,))}
    actual: dict[str, list[Any]] = {bflag_key(str(u), str(n), str(g), str(f)): [] for
                                    u, n, g, f in conn.execute(
        "SELECT p.user, b.name, m.guid, p.flag FROM board_private p "
        "JOIN mailboxes b ON b.id = p.mailbox_id "
        "JOIN messages m ON m.mailbox_id = p.mailbox_id AND m.uid = p.uid")}
    live = _live_users(conn)

    def keep(k: str) -> bool:
        user, board, guid, _ = k.split(SEP)
        return user in live and key(board, guid) in posts

    return _registers(actual, _stamps(conn, BFLAG), keep)


def moderator_rows(conn: sqlite3.Connection) -> Rows:
    return {key(b, u): [int(h), str(o), int(p)] for b, u, p, h, o in conn.execute(
        "SELECT board, user, present, hlc, origin FROM board_moderators")}


def gatewaykey_rows(conn: sqlite3.Connection) -> Rows:
    # A revoked key's stamps differ between nodes that saw the add and nodes that saw only the
    # revocation; revoked is final, so that is all its row says.
    return {str(n): [1] if r is not None else [0, int(h), str(o), str(s)]
            for n, s, r, h, o in conn.execute(
                "SELECT name, secret, revoked, hlc, origin FROM gateway_keys")}


_OUTBOUND_COLUMNS = ("state", "sender", "recipients", "body_hash", "size", "created",
                     "next_attempt", "attempts", "owner", "epoch", "lease_until", "warned",
                     "last_error", "done_reason")
_STATE_RANK = {"early": 0, "queued": 1, "done": 2}


def outbound_rows(conn: sqlite3.Connection) -> Rows:
    out: Rows = {}
    for row in conn.execute(f"SELECT id, {', '.join(_OUTBOUND_COLUMNS)} FROM outbound_queue"):
        values = dict(zip(_OUTBOUND_COLUMNS, row[1:], strict=True))
        values["recipients"] = json.loads(values["recipients"] or "{}")
        out[str(row[0])] = [values]
    return out


def _outbound_digest(value: list[Any]) -> list[Any]:
    """What replicas of a queued message agree on once joined: the schedule, the lease's
    expiry and the wording of pending answers are the delivering node's own business."""
    v = value[0]
    return [_STATE_RANK.get(str(v["state"]), 0), v["sender"], v["size"], v["created"],
            {a: r.get("state") for a, r in v["recipients"].items()}, v["attempts"], v["warned"],
            v["epoch"], v["owner"]]


ROWS: dict[str, Callable[[sqlite3.Connection], Rows]] = {
    USER: user_rows, MAILBOX: mailbox_rows, SUB: sub_rows, BFLAG: bflag_rows,
    MODERATOR: moderator_rows, GATEWAYKEY: gatewaykey_rows, OUTBOUND: outbound_rows,
}


def _digest_value(kind: str, value: list[Any]) -> list[Any]:
    return _outbound_digest(value) if kind == OUTBOUND else value


def _bucket(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()[:BUCKET_CHARS]


def _hash(kind: str, rows: Iterable[tuple[str, list[Any]]]) -> str:
    h = hashlib.sha256()
    text = json.dumps if kind == OUTBOUND else _plain
    for k, value in sorted(rows):
        h.update(f"{k}\x1e{text(_digest_value(kind, value))}\n".encode())
    return h.hexdigest()


def _plain(value: list[Any]) -> str:
    """A register's values (ints and strings without control characters), cheaper than JSON."""
    return "\x1f".join(map(str, value))


def digests(conn: sqlite3.Connection, kinds: Iterable[str] = KINDS) -> dict[str, str]:
    """First level: one digest per kind."""
    return {kind: _hash(kind, ROWS[kind](conn).items()) for kind in kinds if kind in ROWS}


def buckets(conn: sqlite3.Connection, kind: str) -> dict[str, str]:
    """Second level: a digest per bucket of keys of one kind."""
    grouped: dict[str, list[tuple[str, list[Any]]]] = {}
    for k, value in ROWS[kind](conn).items():
        grouped.setdefault(_bucket(k), []).append((k, value))
    return {b: _hash(kind, rows) for b, rows in grouped.items()}


def rows(conn: sqlite3.Connection, kind: str, wanted: Iterable[str]) -> Rows:
    """The rows of some buckets of one kind (at most MAX_ROWS)."""
    chosen = set(wanted)
    out: Rows = {}
    for k, value in sorted(ROWS[kind](conn).items()):
        if _bucket(k) in chosen:
            out[k] = value
            if len(out) >= MAX_ROWS:
                break
    return out


def bodies_wanted(conn: sqlite3.Connection, kind: str, theirs: Rows) -> list[str]:
    """Bodies of queued outbound messages a merge would take in and this node lacks."""
    if kind != OUTBOUND:
        return []
    hashes = {str(v[0]["body_hash"]) for v in theirs.values()
              if v[0].get("body_hash") and v[0].get("state") == "queued"}
    return [h for h in sorted(hashes)
            if conn.execute("SELECT 1 FROM bodies WHERE hash = ?", (h,)).fetchone() is None]


# merging ------------------------------------------------------------------------------------


def merge(tx: Tx, kind: str, theirs: Rows, bodies: Mapping[str, bytes] | None = None,
          clock: HybridClock | None = None) -> int:
    """Join a peer's rows of one kind into this node's; returns the rows that changed here.
    The node's clock moves past every stamp taken in, so a later local change of the same
    register stamps later (else the register would keep the peer's older-looking value)."""
    conn = tx.conn
    if clock is not None:
        clock.update(max((_hlc_of(kind, v) for v in theirs.values()), default=0))
    mine = ROWS[kind](conn)
    changed = 0
    for k, value in sorted(theirs.items()):
        if kind in _REGISTERS and not value[2]:
            # Their table disagrees with their stamp: only the stamp's meaning travels (a row
            # there that the change removed says "absent"; one it lost says nothing).
            if not value[3]:
                continue
            value = [value[0], value[1], 1, 0]
        if _MERGE[kind](tx, k, value, mine.get(k), bodies or {}):
            changed += 1
    return changed


_REGISTERS = (USER, MAILBOX, SUB, BFLAG)


def _hlc_of(kind: str, value: list[Any]) -> int:
    if kind in _REGISTERS or kind == MODERATOR:
        return int(value[0])
    if kind == GATEWAYKEY and len(value) > 1:
        return int(value[1])
    return 0


def _rank(value: list[Any] | None) -> tuple[Any, ...]:
    """Registers order by (hlc, origin, agrees, present, value): the latest change wins; at
    one stamp the row that agrees with it, then a present row (nothing is lost), then the
    larger value (UIDNEXT, joined by max elsewhere, is not part of it)."""
    return (-1,) if value is None else (int(value[0]), str(value[1]), int(value[2]),
                                        int(value[3]), json.dumps(value[4:5]))


def _logged(conn: sqlite3.Connection, kinds: tuple[str, ...], field: str, match: str,
            value: str, hlc: int, origin: str) -> str | None:
    """What the change record stamped (hlc, origin) set `value` to, if this node holds it."""
    for (payload,) in conn.execute(
            f"SELECT payload FROM changelog WHERE origin = ? AND hlc = ? AND kind IN "
            f"({', '.join('?' * len(kinds))})", (origin, hlc, *kinds)):
        record = json.loads(payload)
        if str(record.get(match)) == value:
            found = record.get(field)
            return "" if found is None else str(found)
    return None


def _wins(conn: sqlite3.Connection, theirs: list[Any], mine: list[Any] | None,
          truth: Callable[[], str | None]) -> bool:
    """Whether their register beats mine. At one stamp with different values (a value altered
    behind the stamp's back), the record that set it decides when this node holds it, so the
    altered side takes the true value and the true side keeps it; else the larger value."""
    if mine is not None and theirs[:4] == mine[:4] and theirs[3] and theirs[4] != mine[4]:
        known = truth()
        if known is not None:
            return bool(str(theirs[4]) == known)
    return _rank(theirs) > _rank(mine)


def _merge_user(tx: Tx, k: str, theirs: list[Any], mine: list[Any] | None,
                bodies: Mapping[str, bytes]) -> bool:
    if not _wins(tx.conn, theirs, mine, lambda: _logged(
            tx.conn, ("user.add", "user.passwd"), "hash", "user", k, int(theirs[0]),
            str(theirs[1]))):
        return False
    conn = tx.conn
    hlc, origin, present = int(theirs[0]), str(theirs[1]), int(theirs[3])
    if present:
        conn.execute("INSERT INTO users VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                     "password_hash = excluded.password_hash", (k, str(theirs[4]), hlc >> 16))
    else:
        delete_user(tx, k)
    _set(conn, USER, k, hlc, origin, present)
    return True


def delete_user(tx: Tx, user: str) -> None:
    """A user and everything that is theirs (as `user.del` does)."""
    conn = tx.conn
    for (mailbox_id,) in conn.execute("SELECT id FROM mailboxes WHERE owner = ?",
                                      (user,)).fetchall():
        tx.touched.add(int(mailbox_id))
    for table, column in (("users", "name"), ("mailboxes", "owner"), ("subscriptions", "user"),
                          ("board_seen", "user"), ("board_flags", "user")):
        conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (user,))
    _forget_user(conn, user)


def _merge_mailbox(tx: Tx, k: str, theirs: list[Any], mine: list[Any] | None,
                   bodies: Mapping[str, bytes]) -> bool:
    conn = tx.conn
    owner, name, uidvalidity = k.split(SEP)
    changed = False
    if mine is not None and mine[3] and theirs[3] and int(theirs[5]) > int(mine[5]):
        # UIDNEXT only grows: a UID given out anywhere is never given again.
        conn.execute("UPDATE mailboxes SET uidnext = ? WHERE owner = ? AND name = ? AND "
                     "uidvalidity = ?", (int(theirs[5]), owner, name, int(uidvalidity)))
        changed = True
    if not _wins(conn, theirs, mine, lambda: _logged(
            conn, ("mailbox.create", "board.add"), "special_use", "name", name, int(theirs[0]),
            str(theirs[1]))):
        return changed
    if owner != BOARD_OWNER and not conn.execute("SELECT 1 FROM users WHERE name = ?",
                                                 (owner,)).fetchone():
        return changed  # the user is gone here (and their rows with them)
    hlc, origin, present = int(theirs[0]), str(theirs[1]), int(theirs[3])
    held = conn.execute("SELECT id, uidvalidity FROM mailboxes WHERE owner = ? AND name = ?",
                        (owner, name)).fetchone()
    if present:
        special = str(theirs[4]) or None
        if held is not None and int(held[1]) == int(uidvalidity):
            conn.execute("UPDATE mailboxes SET special_use = ?, uidnext = max(uidnext, ?) "
                         "WHERE id = ?", (special, int(theirs[5]), held[0]))
        else:
            if held is not None:
                # Another incarnation holds the name here: the later-stamped one keeps it (the
                # larger UIDVALIDITY at equal stamps), and the other is stamped gone with the
                # winner's stamp, as the peer does when it settles the other way.
                other = key(owner, name, held[1])
                ours = stamp_of(conn, MAILBOX, other) or (*NO_STAMP, 1)
                if (ours[0], ours[1], int(held[1])) >= (hlc, origin, int(uidvalidity)):
                    if newer(conn, MAILBOX, k, ours[0], ours[1], False):
                        _set(conn, MAILBOX, k, ours[0], ours[1], 0)
                    return True
                conn.execute("DELETE FROM mailboxes WHERE id = ?", (held[0],))
                tx.touched.add(int(held[0]))
                _set(conn, MAILBOX, other, hlc, origin, 0)
            cur = conn.execute("INSERT INTO mailboxes (owner, name, uidvalidity, uidnext, "
                               "special_use) VALUES (?, ?, ?, ?, ?)",
                               (owner, name, int(uidvalidity), int(theirs[5]), special))
            assert cur.lastrowid is not None
            tx.touched.add(cur.lastrowid)
    elif held is not None and int(held[1]) == int(uidvalidity):
        conn.execute("DELETE FROM mailboxes WHERE id = ?", (held[0],))
        tx.touched.add(int(held[0]))
    _set(conn, MAILBOX, k, hlc, origin, present)
    return True


def _merge_sub(tx: Tx, k: str, theirs: list[Any], mine: list[Any] | None,
               bodies: Mapping[str, bytes]) -> bool:
    if _rank(theirs) <= _rank(mine):
        return False
    conn = tx.conn
    user, name = k.split(SEP)
    if not conn.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
        return False
    hlc, origin, present = int(theirs[0]), str(theirs[1]), int(theirs[3])
    if present:
        conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?, ?)", (user, name))
    else:
        conn.execute("DELETE FROM subscriptions WHERE user = ? AND name = ?", (user, name))
    _set(conn, SUB, k, hlc, origin, present)
    return True


def _merge_bflag(tx: Tx, k: str, theirs: list[Any], mine: list[Any] | None,
                 bodies: Mapping[str, bytes]) -> bool:
    if _rank(theirs) <= _rank(mine):
        return False
    conn = tx.conn
    user, board, guid, flag = k.split(SEP)
    post = conn.execute("SELECT m.mailbox_id, m.uid FROM messages m JOIN mailboxes b ON "
                        "b.id = m.mailbox_id WHERE b.owner = ? AND b.name = ? AND m.guid = ?",
                        (BOARD_OWNER, board, guid)).fetchone()
    if post is None or not conn.execute("SELECT 1 FROM users WHERE name = ?",
                                        (user,)).fetchone():
        return False
    hlc, origin, present = int(theirs[0]), str(theirs[1]), int(theirs[3])
    mine_flag = frozenset({flag})
    boardflags.set_private(conn, user, int(post[0]), int(post[1]),
                           mine_flag if present else frozenset(),
                           frozenset() if present else mine_flag)
    tx.touched.add(int(post[0]))
    _set(conn, BFLAG, k, hlc, origin, present)
    return True


def _merge_moderator(tx: Tx, k: str, theirs: list[Any], mine: list[Any] | None,
                     bodies: Mapping[str, bytes]) -> bool:
    if mine is not None and (theirs[0], theirs[1], theirs[2]) <= (mine[0], mine[1], mine[2]):
        return False
    board, user = k.split(SEP)
    tx.conn.execute("INSERT OR REPLACE INTO board_moderators VALUES (?, ?, ?, ?, ?)",
                    (board, user, int(theirs[2]), int(theirs[0]), str(theirs[1])))
    return True


def _merge_gatewaykey(tx: Tx, k: str, theirs: list[Any], mine: list[Any] | None,
                      bodies: Mapping[str, bytes]) -> bool:
    if mine is not None and json.dumps(theirs) <= json.dumps(mine):
        return False  # [1] (revoked) sorts above every [0, ...] (live)
    conn = tx.conn
    if theirs[0]:
        gatewaykeys.apply_revoke(conn, k, 0, "")
    else:
        conn.execute("INSERT INTO gateway_keys VALUES (?, ?, ?, NULL, ?, ?) ON CONFLICT (name) "
                     "DO UPDATE SET secret = excluded.secret, hlc = excluded.hlc, "
                     "origin = excluded.origin WHERE gateway_keys.revoked IS NULL",
                     (k, str(theirs[3]), (int(theirs[1]) >> 16) / 1000.0, int(theirs[1]),
                      str(theirs[2])))
    return True


def _merge_outbound(tx: Tx, k: str, theirs: list[Any], mine: list[Any] | None,
                    bodies: Mapping[str, bytes]) -> bool:
    conn = tx.conn
    t = dict(theirs[0])
    if mine is None:
        body = t.get("body_hash")
        if t["state"] == "queued" and body is not None and not conn.execute(
                "SELECT 1 FROM bodies WHERE hash = ?", (body,)).fetchone():
            data = bodies.get(str(body))
            if data is None:
                return False  # the body comes with a later pass
            conn.execute("INSERT OR IGNORE INTO bodies VALUES (?, ?)", (body, data))
        if t["state"] != "queued":
            t["body_hash"] = None
        values = [t[c] if c != "recipients" else json.dumps(t[c]) for c in _OUTBOUND_COLUMNS]
        conn.execute(f"INSERT INTO outbound_queue (id, {', '.join(_OUTBOUND_COLUMNS)}) VALUES "
                     f"(?, {', '.join('?' * len(_OUTBOUND_COLUMNS))})", (k, *values))
        return True
    m = dict(mine[0])
    joined = dict(m)
    joined["recipients"] = {**m["recipients"], **{
        a: r for a, r in t["recipients"].items()
        if a not in m["recipients"] or outbound_records.STATE_RANK.get(str(r.get("state")), 0)
        > outbound_records.STATE_RANK.get(str(m["recipients"][a].get("state")), 0)}}
    joined["attempts"] = max(int(m["attempts"]), int(t["attempts"]))
    joined["warned"] = max(int(m["warned"]), int(t["warned"]))
    if (int(t["epoch"]), str(t["owner"])) > (int(m["epoch"]), str(m["owner"])):
        for column in ("owner", "epoch", "lease_until", "next_attempt", "last_error"):
            joined[column] = t[column]
    if m["state"] == "early" and t["state"] != "early":
        for column in ("sender", "size", "created"):
            joined[column] = t[column]
        if t["state"] == "queued":
            joined["state"] = "queued"
            body = t.get("body_hash")
            if body is not None and str(body) in bodies:
                conn.execute("INSERT OR IGNORE INTO bodies VALUES (?, ?)",
                             (body, bodies[str(body)]))
            if body is not None and conn.execute("SELECT 1 FROM bodies WHERE hash = ?",
                                                 (body,)).fetchone():
                joined["body_hash"] = body
    if t["state"] == "done" and m["state"] != "done":
        joined["state"] = "done"
        joined["body_hash"] = None
        joined["done_reason"] = t["done_reason"]
    if _outbound_digest([joined]) == _outbound_digest([m]) and joined == m:
        return False
    conn.execute(f"UPDATE outbound_queue SET {', '.join(c + ' = ?' for c in _OUTBOUND_COLUMNS)} "
                 "WHERE id = ?", (*[joined[c] if c != "recipients" else json.dumps(joined[c])
                                    for c in _OUTBOUND_COLUMNS], k))
    if m.get("body_hash") and joined["body_hash"] is None:
        conn.execute("DELETE FROM bodies WHERE hash = ? "
                     "AND NOT EXISTS (SELECT 1 FROM messages WHERE body_hash = ?1) "
                     "AND NOT EXISTS (SELECT 1 FROM outbound_queue WHERE body_hash = ?1)",
                     (m["body_hash"],))
    return True


_MERGE: dict[str, Callable[[Tx, str, list[Any], list[Any] | None, Mapping[str, bytes]],
                           bool]] = {
    USER: _merge_user, MAILBOX: _merge_mailbox, SUB: _merge_sub, BFLAG: _merge_bflag,
    MODERATOR: _merge_moderator, GATEWAYKEY: _merge_gatewaykey, OUTBOUND: _merge_outbound,
}
