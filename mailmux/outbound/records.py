"""What each outbound change record does to the queue table.

The same function runs for a change made here (before it is logged) and for a record that came
from a peer, so every replica applies identical rules and converges whatever the arrival order:

- `outbound.enqueue` inserts the message unless its id is known (a tombstone included), or
  completes the placeholder a claim or attempt that overtook it left;
- `outbound.claim` moves the delivery lease if (epoch, owner) is not older than the current one:
  the owner renews with its own epoch, a node taking over uses epoch + 1, and two nodes taking
  over at once resolve to the same winner everywhere (the larger node id); lease fields move on
  finished rows too, so replicas end identical whatever the order;
- `outbound.attempt` merges per-recipient states (they only move forward), keeps the highest
  attempt count and, if its lease wins, the schedule;
- `outbound.retry` asks for an attempt now (operator's `queue retry`);
- `outbound.done` ends the message and drops its body (unless a mailbox message shares it).

The enqueue record names the body by content hash; the body itself travels beside the records
(`bodies`), as for `message.add`. Only the sqlite3 module is used here: the store's apply path
imports this without importing the rest of the outbound package.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

KINDS = ("outbound.enqueue", "outbound.claim", "outbound.attempt", "outbound.retry",
         "outbound.done")
STATE_RANK = {"pending": 0, "sent": 1, "failed": 1, "reported": 2}

Payload = dict[str, Any]


def apply(conn: sqlite3.Connection, kind: str, payload: Payload,
          bodies: Mapping[str, bytes] | None = None) -> None:
    handler = _HANDLERS.get(kind)
    if handler is not None:
        handler(conn, payload, bodies or {})


def _lease_wins(row: tuple[Any, ...] | None, epoch: int, owner: str) -> bool:
    return row is not None and (int(epoch), str(owner)) >= (int(row[0]), str(row[1]))


def _lease(conn: sqlite3.Connection, message_id: str) -> tuple[Any, ...] | None:
    row = conn.execute("SELECT epoch, owner FROM outbound_queue WHERE id = ?",
                       (message_id,)).fetchone()
    return tuple(row) if row is not None else None


def _early(conn: sqlite3.Connection, message_id: str) -> None:
    """A claim or attempt can arrive before the enqueue it follows (peers ship origins in any
    order): keep what it says in a placeholder row that the enqueue completes."""
    conn.execute(
        "INSERT OR IGNORE INTO outbound_queue (id, sender, recipients, created, next_attempt, "
        "owner, epoch, lease_until, state) VALUES (?, '', '{}', 0, 0, '', 0, 0, 'early')",
        (message_id,),
    )


def _enqueue(conn: sqlite3.Connection, p: Payload, bodies: Mapping[str, bytes]) -> None:
    body = _store_body(conn, p.get("body"), bodies)
    recipients = {r: {"state": "pending", "code": 0, "text": ""} for r in p["recipients"]}
    row = conn.execute("SELECT state, recipients, created FROM outbound_queue WHERE id = ?",
                       (p["id"],)).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO outbound_queue (id, sender, recipients, body_hash, size, created, "
            "next_attempt, owner, epoch, lease_until) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (p["id"], p["sender"], json.dumps(recipients), body, int(p.get("size", 0)),
             float(p["created"]), float(p["next_attempt"]), p["owner"], int(p["epoch"]),
             float(p["lease_until"])),
        )
    elif row[0] == "early" or (row[0] == "done" and not row[2]):
        # A placeholder, or a tombstone that overtook its enqueue: fill in the envelope (a
        # finished message keeps no body).
        merged = merge_recipients(recipients, json.loads(row[1]))
        live = row[0] == "early"
        conn.execute(
            "UPDATE outbound_queue SET sender = ?, recipients = ?, body_hash = ?, size = ?, "
            "created = ?, state = ? WHERE id = ?",
            (p["sender"], json.dumps(merged), body if live else None, int(p.get("size", 0)),
             float(p["created"]), "queued" if live else "done", p["id"]),
        )
        if _lease_wins(_lease(conn, p["id"]), p["epoch"], p["owner"]):
            conn.execute(
                "UPDATE outbound_queue SET owner = ?, epoch = ?, lease_until = ?, "
                "next_attempt = ? WHERE id = ?",
                (p["owner"], int(p["epoch"]), float(p["lease_until"]),
                 float(p["next_attempt"]), p["id"]),
            )
    _collect_body(conn, body)  # unused when the row was already finished


def _store_body(conn: sqlite3.Connection, body_hash: object,
                bodies: Mapping[str, bytes]) -> str | None:
    """The body's hash if this node holds (or just received) the body, else None: a peer that
    already finished the message may no longer have it, and then it is not deliverable here."""
    if not isinstance(body_hash, str):
        return None
    data = bodies.get(body_hash)
    if data is not None:
        conn.execute("INSERT OR IGNORE INTO bodies VALUES (?, ?)", (body_hash, data))
        return body_hash
    held = conn.execute("SELECT 1 FROM bodies WHERE hash = ?", (body_hash,)).fetchone()
    return body_hash if held else None


def _collect_body(conn: sqlite3.Connection, body_hash: str | None) -> None:
    if body_hash is None:
        return
    conn.execute(
        "DELETE FROM bodies WHERE hash = ? "
        "AND NOT EXISTS (SELECT 1 FROM messages WHERE body_hash = ?) "
        "AND NOT EXISTS (SELECT 1 FROM outbound_queue WHERE body_hash = ?)",
        (body_hash, body_hash, body_hash),
    )


def _claim(conn: sqlite3.Connection, p: Payload, bodies: Mapping[str, bytes]) -> None:
    _early(conn, p["id"])
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


def _attempt(conn: sqlite3.Connection, p: Payload, bodies: Mapping[str, bytes]) -> None:
    _early(conn, p["id"])
    row = conn.execute("SELECT recipients, attempts, state, warned FROM outbound_queue "
                       "WHERE id = ?", (p["id"],)).fetchone()
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


def _retry(conn: sqlite3.Connection, p: Payload, bodies: Mapping[str, bytes]) -> None:
    conn.execute(
        "UPDATE outbound_queue SET next_attempt = ?, lease_until = min(lease_until, ?) "
        "WHERE id = ? AND state = 'queued'",
        (float(p["next_attempt"]), float(p["lease_until"]), p["id"]),
    )


def _done(conn: sqlite3.Connection, p: Payload, bodies: Mapping[str, bytes]) -> None:
    row = conn.execute("SELECT last_error FROM outbound_queue WHERE id = ?",
                       (p["id"],)).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO outbound_queue (id, sender, recipients, created, next_attempt, owner, "
            "state, done_reason) VALUES (?, '', '{}', 0, 0, '', 'done', ?)",
            (p["id"], p.get("reason", "")),
        )
        return
    body = conn.execute("SELECT body_hash FROM outbound_queue WHERE id = ?",
                        (p["id"],)).fetchone()[0]
    conn.execute(
        "UPDATE outbound_queue SET state = 'done', body_hash = NULL, done_reason = ? "
        "WHERE id = ?", (p.get("reason", ""), p["id"]),
    )
    _collect_body(conn, body)


_HANDLERS: dict[str, Callable[[sqlite3.Connection, Payload, Mapping[str, bytes]], None]] = {
    "outbound.enqueue": _enqueue,
    "outbound.claim": _claim,
    "outbound.attempt": _attempt,
    "outbound.retry": _retry,
    "outbound.done": _done,
}
