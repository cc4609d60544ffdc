"""What each outbound change record does to the queue table.

The same function runs for a change made here (before it is logged) and for a record that came
from a peer, so every replica applies identical rules and converges whatever the arrival order:

- `outbound.enqueue` inserts the message unless its id is known (a tombstone included);
- `outbound.claim` moves the delivery lease if (epoch, owner) is not older than the current one:
  the owner renews with its own epoch, a node taking over uses epoch + 1, and two nodes taking
  over at once resolve to the same winner everywhere (the larger node id);
- `outbound.attempt` merges per-recipient states (they only move forward), keeps the highest
  attempt count and, if its lease wins, the schedule;
- `outbound.retry` asks for an attempt now (operator's `queue retry`);
- `outbound.done` ends the message, drops its body, and strips the body from the local copy of
  the enqueue record so the change log does not keep every sent message forever.

Only the sqlite3 module is used here: the store's apply path imports this without importing the
rest of the outbound package.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable
from typing import Any

KINDS = ("outbound.enqueue", "outbound.claim", "outbound.attempt", "outbound.retry",
         "outbound.done")
STATE_RANK = {"pending": 0, "sent": 1, "failed": 1, "reported": 2}

Payload = dict[str, Any]


def apply(conn: sqlite3.Connection, kind: str, payload: Payload,
          origin: str = "", seq: int = 0) -> None:
    handler = _HANDLERS.get(kind)
    if handler is not None:
        handler(conn, payload, origin, seq)


def _lease_wins(row: tuple[Any, ...] | None, epoch: int, owner: str) -> bool:
    return row is not None and (int(epoch), str(owner)) >= (int(row[0]), str(row[1]))


def _lease(conn: sqlite3.Connection, message_id: str) -> tuple[Any, ...] | None:
    row = conn.execute("SELECT epoch, owner, state FROM outbound_queue WHERE id = ?",
                       (message_id,)).fetchone()
    return tuple(row) if row is not None and row[2] == "queued" else None


def _enqueue(conn: sqlite3.Connection, p: Payload, origin: str, seq: int) -> None:
    body = base64.b64decode(p["body"]) if p.get("body") is not None else None
    recipients = {r: {"state": "pending", "code": 0, "text": ""} for r in p["recipients"]}
    conn.execute(
        "INSERT OR IGNORE INTO outbound_queue (id, sender, recipients, body, size, created, "
        "next_attempt, owner, epoch, lease_until) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (p["id"], p["sender"], json.dumps(recipients), body, int(p.get("size", 0)),
         float(p["created"]), float(p["next_attempt"]), p["owner"], int(p["epoch"]),
         float(p["lease_until"])),
    )
    if seq:
        conn.execute("INSERT OR IGNORE INTO outbound_records VALUES (?, ?, ?)",
                     (p["id"], origin, seq))


def _claim(conn: sqlite3.Connection, p: Payload, origin: str, seq: int) -> None:
    if _lease_wins(_lease(conn, p["id"]), p["epoch"], p["owner"]):
        conn.execute(
            "UPDATE outbound_queue SET owner = ?, epoch = ?, lease_until = ? WHERE id = ?",
            (p["owner"], int(p["epoch"]), float(p["lease_until"]), p["id"]),
        )


def merge_recipients(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(current)
    for address, new in update.items():
        old = merged.get(address)
        # Equal pending states take the newer answer's text (cosmetic: only DSNs show it).
        if old is None or STATE_RANK[new["state"]] > STATE_RANK[old["state"]] or (
                new["state"] == old["state"] == "pending"):
            merged[address] = new
    return merged


def _attempt(conn: sqlite3.Connection, p: Payload, origin: str, seq: int) -> None:
    row = conn.execute("SELECT recipients, attempts, state, warned FROM outbound_queue "
                       "WHERE id = ?", (p["id"],)).fetchone()
    if row is None or row[2] != "queued":
        return
    recipients = merge_recipients(json.loads(row[0]), p["recipients"])
    conn.execute(
        "UPDATE outbound_queue SET recipients = ?, attempts = max(attempts, ?), warned = ? "
        "WHERE id = ?",
        (json.dumps(recipients), int(p["attempts"]), max(int(row[3]), int(p.get("warned", 0))),
         p["id"]),
    )
    if _lease_wins(_lease(conn, p["id"]), p["epoch"], p["owner"]):
        conn.execute(
            "UPDATE outbound_queue SET next_attempt = ?, lease_until = ?, owner = ?, epoch = ?, "
            "last_error = ? WHERE id = ?",
            (float(p["next_attempt"]), float(p["lease_until"]), p["owner"], int(p["epoch"]),
             p.get("last_error", ""), p["id"]),
        )


def _retry(conn: sqlite3.Connection, p: Payload, origin: str, seq: int) -> None:
    conn.execute(
        "UPDATE outbound_queue SET next_attempt = ?, lease_until = min(lease_until, ?) "
        "WHERE id = ? AND state = 'queued'",
        (float(p["next_attempt"]), float(p["lease_until"]), p["id"]),
    )


def _done(conn: sqlite3.Connection, p: Payload, origin: str, seq: int) -> None:
    row = conn.execute("SELECT last_error FROM outbound_queue WHERE id = ?",
                       (p["id"],)).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO outbound_queue (id, sender, recipients, created, next_attempt, owner, "
            "state, done_reason) VALUES (?, '', '{}', 0, 0, '', 'done', ?)",
            (p["id"], p.get("reason", "")),
        )
        return
    conn.execute(
        "UPDATE outbound_queue SET state = 'done', body = NULL, done_reason = ? WHERE id = ?",
        (p.get("reason", ""), p["id"]),
    )
    _scrub_enqueue_record(conn, p["id"])


def _scrub_enqueue_record(conn: sqlite3.Connection, message_id: str) -> None:
    row = conn.execute("SELECT origin, seq FROM outbound_records WHERE id = ?",
                       (message_id,)).fetchone()
    if row is not None:
        conn.execute(
            "UPDATE changelog SET payload = json_remove(payload, '$.body') "
            "WHERE origin = ? AND seq = ?", (row[0], row[1]),
        )
        conn.execute("DELETE FROM outbound_records WHERE id = ?", (message_id,))


_HANDLERS: dict[str, Callable[[sqlite3.Connection, Payload, str, int], None]] = {
    "outbound.enqueue": _enqueue,
    "outbound.claim": _claim,
    "outbound.attempt": _attempt,
    "outbound.retry": _retry,
    "outbound.done": _done,
}
