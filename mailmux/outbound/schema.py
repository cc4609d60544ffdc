"""The outbound queue's table in the node's SQLite file (created with the store's own tables).

One row per queued message. `recipients` is a JSON object {address: {"state", "code", "text"}}
whose states only move forward (pending → sent | failed → reported), which is what lets replicas
merge attempt records in any order. `owner`/`epoch`/`lease_until` are the delivery lease. A
finished message keeps its row with `state = 'done'` and no body, as a tombstone: a late copy of
its enqueue record (from a peer catching up) then cannot bring it back.
"""

from __future__ import annotations

import sqlite3

DDL = """
CREATE TABLE IF NOT EXISTS outbound_queue (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    body BLOB,
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
-- where each message's enqueue record sits in the change log (its body is dropped when done)
CREATE TABLE IF NOT EXISTS outbound_records (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbound_due ON outbound_queue(state, next_attempt);
"""


def prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)
