"""The outbound queue's table in the node's SQLite file (created with the store's own tables).

One row per queued message. `recipients` is a JSON object {address: {"state", "code", "text"}}
whose states only move forward (pending → sent | failed → reported), which is what lets replicas
merge attempt records in any order. `owner`/`epoch`/`lease_until` are the delivery lease. The
message itself sits in the store's `bodies` table under `body_hash`, so replication ships it the
way it ships mailbox messages (once per batch, outside the change record) and the change log holds
no message bytes. A finished message keeps its row with `state = 'done'` and no body, as a
tombstone: a late copy of its enqueue record (from a peer catching up) cannot bring it back.
"""

from __future__ import annotations

import sqlite3

DDL = """
CREATE TABLE IF NOT EXISTS outbound_queue (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    body_hash TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'queued',
    warned INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    done_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbound_due ON outbound_queue(state, next_attempt);
CREATE INDEX IF NOT EXISTS outbound_body ON outbound_queue(body_hash);
"""


def prepare(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbound_queue)")}
    if columns and "body_hash" not in columns:
        # A queue table from before bodies moved to the bodies table (development builds).
        conn.execute("ALTER TABLE outbound_queue ADD COLUMN body_hash TEXT")
    conn.executescript(DDL)
