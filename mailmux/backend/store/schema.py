"""The node database's tables (SQLite). One file per node; see sqlite.py for why bodies live here.

Bodies are keyed by the SHA-256 of their content, not by the GUID: the GUID names a message
pool-wide (and comes from outside on replays), while the content hash makes sharing safe — two
messages share a body row only if their bytes are identical.
"""

from __future__ import annotations

import sqlite3

from mailmux.outbound import schema as outbound_schema

VERSION = 2

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


# Version 2: what makes a command's cost independent of the mailbox's size. Triggers, not
# code, keep the summaries current, so every path that writes messages (local commands, the
# replica apply path, undo) maintains them without having to remember to:
# - mailbox_counts: EXISTS, shared \Seen count and total size, read by SELECT/STATUS/LIST;
# - mailbox_keywords: every keyword ever set in a mailbox (SELECT's FLAGS line), never pruned,
#   as Dovecot does;
# - expunged: (uid, modseq) of each expunge, so that a session's view catches up from the
#   modseq it knows (`changes_since_modseq`) instead of re-reading every row. An expunge is
#   stamped with highestmodseq + 1: every writer bumps highestmodseq once after deleting.
# - messages_modseq / messages_unseen: the change feed's and first-unseen's indexes.
# - messages_flags: covers what FETCH (FLAGS UID MODSEQ) reads, so one message's flags are one
#   descent of a narrow B-tree (~40 bytes a message) instead of the UID index and then the
#   wide table row: at 100k messages the second descent missed the page cache on almost every
#   random UID FETCH, the one part of that command that grew with the mailbox.
# - body_index / body_fts: SEARCH's cached header fields and an FTS5 trigram index of the
#   decoded text, one row per distinct body (filled by `SqliteStore.index_body`).
PERF_DDL = r"""
CREATE TABLE IF NOT EXISTS mailbox_counts (
    mailbox_id INTEGER PRIMARY KEY,
    messages INTEGER NOT NULL DEFAULT 0,
    seen INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mailbox_keywords (
    mailbox_id INTEGER NOT NULL,
    keyword TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, keyword)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expunged (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged(mailbox_id, modseq);
CREATE TABLE IF NOT EXISTS expunged_horizon (
    mailbox_id INTEGER PRIMARY KEY,
    modseq INTEGER NOT NULL  -- the history of expunges at or below this MODSEQ was pruned
);
CREATE INDEX IF NOT EXISTS messages_modseq ON messages(mailbox_id, modseq);
CREATE INDEX IF NOT EXISTS messages_unseen ON messages(mailbox_id, uid)
    WHERE instr(' ' || flags || ' ', ' \Seen ') = 0;
CREATE INDEX IF NOT EXISTS messages_flags ON messages(mailbox_id, uid, flags, modseq);
CREATE TABLE IF NOT EXISTS body_index (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    subject TEXT, from_ TEXT, to_ TEXT, cc TEXT, bcc TEXT, message_id TEXT,
    from_addr TEXT, to_addr TEXT, cc_addr TEXT, bcc_addr TEXT,  -- as FROM/TO/CC/BCC match
    sent TEXT,
    partial INTEGER NOT NULL DEFAULT 0  -- text too long: only part of it is in body_fts
);
CREATE TRIGGER IF NOT EXISTS body_index_gone AFTER DELETE ON bodies BEGIN
    DELETE FROM body_fts WHERE rowid = (SELECT id FROM body_index WHERE hash = old.hash);
    DELETE FROM body_index WHERE hash = old.hash;
END;
CREATE VIRTUAL TABLE IF NOT EXISTS body_fts USING fts5(header, body, tokenize='trigram',
    detail='column');

CREATE TRIGGER IF NOT EXISTS mailbox_counts_new AFTER INSERT ON mailboxes BEGIN
    INSERT OR IGNORE INTO mailbox_counts (mailbox_id) VALUES (new.id);
END;
CREATE TRIGGER IF NOT EXISTS mailbox_summaries_gone AFTER DELETE ON mailboxes BEGIN
    DELETE FROM mailbox_counts WHERE mailbox_id = old.id;
    DELETE FROM mailbox_keywords WHERE mailbox_id = old.id;
    DELETE FROM expunged WHERE mailbox_id = old.id;
    DELETE FROM expunged_horizon WHERE mailbox_id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS messages_counted AFTER INSERT ON messages BEGIN
    UPDATE mailbox_counts SET messages = messages + 1, size = size + new.size,
        seen = seen + (instr(' ' || new.flags || ' ', ' \Seen ') > 0)
        WHERE mailbox_id = new.mailbox_id;
    DELETE FROM expunged WHERE mailbox_id = new.mailbox_id AND uid = new.uid;
END;
CREATE TRIGGER IF NOT EXISTS messages_uncounted AFTER DELETE ON messages BEGIN
    UPDATE mailbox_counts SET messages = messages - 1, size = size - old.size,
        seen = seen - (instr(' ' || old.flags || ' ', ' \Seen ') > 0)
        WHERE mailbox_id = old.mailbox_id;
    INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq)
        SELECT id, old.uid, highestmodseq + 1 FROM mailboxes WHERE id = old.mailbox_id;
END;
CREATE TRIGGER IF NOT EXISTS messages_seen_counted AFTER UPDATE OF flags ON messages BEGIN
    UPDATE mailbox_counts SET
        seen = seen + (instr(' ' || new.flags || ' ', ' \Seen ') > 0)
                    - (instr(' ' || old.flags || ' ', ' \Seen ') > 0)
        WHERE mailbox_id = new.mailbox_id;
END;
CREATE TRIGGER IF NOT EXISTS messages_keywords_new AFTER INSERT ON messages
    WHEN (' ' || new.flags) GLOB '* [^\]*' BEGIN
    INSERT OR IGNORE INTO mailbox_keywords
        SELECT new.mailbox_id, value FROM json_each(
            '["' || replace(replace(new.flags, '\', '\\'), ' ', '","') || '"]')
        WHERE value NOT LIKE '\%';
END;
CREATE TRIGGER IF NOT EXISTS messages_keywords_set AFTER UPDATE OF flags ON messages
    WHEN (' ' || new.flags) GLOB '* [^\]*' BEGIN
    INSERT OR IGNORE INTO mailbox_keywords
        SELECT new.mailbox_id, value FROM json_each(
            '["' || replace(replace(new.flags, '\', '\\'), ' ', '","') || '"]')
        WHERE value NOT LIKE '\%';
END;
"""

# Summaries of a database written by version 1 (rebuilt once, in the migrating transaction).
_BACKFILL = r"""
INSERT OR REPLACE INTO mailbox_counts
    SELECT b.id, count(m.uid), coalesce(sum(instr(' ' || m.flags || ' ', ' \Seen ') > 0), 0),
           coalesce(sum(m.size), 0)
    FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id GROUP BY b.id;
INSERT OR IGNORE INTO mailbox_keywords
    SELECT m.mailbox_id, j.value FROM messages m, json_each(
        '["' || replace(replace(m.flags, '\', '\\'), ' ', '","') || '"]') j
    WHERE m.flags <> '' AND j.value NOT LIKE '\%';
"""


class SchemaError(Exception):
    pass


def prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)
    outbound_schema.prepare(conn)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is not None and int(row[0]) not in (1, VERSION):
        raise SchemaError(f"database schema version {row[0]}, this mailmux expects {VERSION}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(PERF_DDL):
            conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(VERSION),))
        elif int(row[0]) == 1:
            for statement in _statements(_BACKFILL):
                conn.execute(statement)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                         (str(VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a script into statements (triggers hold `;` inside BEGIN ... END)."""
    out: list[str] = []
    current = ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


# A mailbox and everything below it, matched exactly and case-sensitively: LIKE would treat
# `_` and `%` in names as wildcards and fold ASCII case, reaching unrelated mailboxes.
SUBTREE = ("SELECT id, name FROM mailboxes WHERE owner = ? AND "
           "(name = ? OR substr(name, 1, length(?3)) = ?3)")
