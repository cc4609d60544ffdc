"""Replay ids: a change the gateway sends again after a failover takes effect once.

The gateway tags a replayable IMAP command (`tag XREPLAY <id> APPEND ...`) or SMTP transaction
(`MAIL FROM:<a> XREPLAY=<id>`) with an id unique per gateway session and command. The store
records id -> the original answer in the same transaction as the change, and ships that record
with the change, so whichever replica the replay reaches answers what the original answered
(same APPENDUID/COPYUID) instead of doing it again. Deduplication is by identity only: two
identical APPENDs without an id are two messages.

The id reaches the store through a context variable set by the session around one command: every
store write made while it is set is that command's change (one write per command), and no store
method signature has to carry it.
"""

from __future__ import annotations

import contextvars
import json
import sqlite3
from typing import TYPE_CHECKING, Any

from mailmux.backend.errors import BackendError

if TYPE_CHECKING:
    from mailmux.backend.store.writer import Tx

MAX_ID = 64
SMTP_SCOPE = "@smtp"
REPLAY: contextvars.ContextVar[str | None] = contextvars.ContextVar("mailmux_replay",
                                                                   default=None)

DDL = """
CREATE TABLE IF NOT EXISTS replays (
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    answer TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    PRIMARY KEY (scope, id)
);
"""

Key = tuple[str, str]  # (scope: the user, or SMTP_SCOPE; id)


class Replayed(BackendError):
    """This change was already made under the same replay id; `answer` is what it returned."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__("already done")
        self.answer = answer


def valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID and all(c.isascii() and (c.isalnum() or c in "-._")
                                            for c in value)


def current(scope: str) -> Key | None:
    value = REPLAY.get()
    return (scope.lower(), value) if value else None


def prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def lookup(conn: sqlite3.Connection, key: Key) -> dict[str, Any] | None:
    row = conn.execute("SELECT answer FROM replays WHERE scope = ? AND id = ?", key).fetchone()
    return dict(json.loads(row[0])) if row else None


def check(tx: Tx, key: Key | None) -> None:
    """Raise Replayed if `key` already has an effect here (inside the write transaction)."""
    if key is not None:
        found = lookup(tx.conn, key)
        if found is not None:
            raise Replayed(found)


def insert(conn: sqlite3.Connection, key: Key, answer: dict[str, Any], hlc: int) -> None:
    conn.execute("INSERT OR IGNORE INTO replays VALUES (?, ?, ?, ?)",
                 (key[0], key[1], json.dumps(answer, sort_keys=True), hlc))


def forget(conn: sqlite3.Connection, key: Key) -> None:
    conn.execute("DELETE FROM replays WHERE scope = ? AND id = ?", key)
