"""The node database's tables (SQLite). One file per node; see sqlite.py for why bodies live here.

Bodies are keyed by the SHA-256 of their content, not by the GUID: the GUID names a message
pool-wide (and comes from outside on replays), while the content hash makes sharing safe — two
messages share a body row only if their bytes are identical.
"""

from __future__ import annotations

import sqlite3

from mailmux.outbound import schema as outbound_schema

VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    special_use TEXT,
    UNIQUE (owner, name)
);
CREATE TABLE IF NOT EXISTS subscriptions (
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (user, name)
);
CREATE TABLE IF NOT EXISTS bodies (
    hash TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    guid TEXT NOT NULL,
    body_hash TEXT NOT NULL REFERENCES bodies(hash),
    internaldate TEXT NOT NULL,
    size INTEGER NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid),
    UNIQUE (mailbox_id, guid)
);
CREATE INDEX IF NOT EXISTS messages_body ON messages(body_hash);
CREATE TABLE IF NOT EXISTS board_seen (
    user TEXT NOT NULL,
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    PRIMARY KEY (user, mailbox_id, uid)
);
CREATE TABLE IF NOT EXISTS flag_stamps (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    guid TEXT NOT NULL,
    flag TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    origin TEXT NOT NULL,
    present INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, guid, flag)
);
CREATE TABLE IF NOT EXISTS tombstones (
    owner TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    guid TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    PRIMARY KEY (owner, mailbox, guid)
);
CREATE TABLE IF NOT EXISTS changelog (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (origin, seq)
);
"""


class SchemaError(Exception):
    pass


def prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)
    outbound_schema.prepare(conn)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(VERSION),))
    elif int(row[0]) != VERSION:
        raise SchemaError(f"database schema version {row[0]}, this mailmux expects {VERSION}")

# A mailbox and everything below it, matched exactly and case-sensitively: LIKE would treat
# `_` and `%` in names as wildcards and fold ASCII case, reaching unrelated mailboxes.
SUBTREE = ("SELECT id, name FROM mailboxes WHERE owner = ? AND "
           "(name = ? OR substr(name, 1, length(?3)) = ?3)")
