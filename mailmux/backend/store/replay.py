"""Replay ids: a change the gateway sends again after a failover takes effect once.

The gateway tags a replayable IMAP command (`tag XREPLAY <id> APPEND ...`) or SMTP transaction
(`MAIL FROM:<a> XREPLAY=<id>`) with an id unique per gateway session and command. The store
records id -> the original answer in the same transaction as the change, and ships that record
with the change, so whichever replica the replay reaches answers what the original answered
(same APPENDUID/COPYUID) instead of doing it again. Deduplication is by identity only: two
identical APPENDs without an id are two messages.

Two runs under one id: a node that hung while it held a change, and was continued after the
gateway had replayed that change elsewhere, can still make it (a second message). Every node
keeps each run it hears of (origin, HLC, the messages it added) and settles on the same winner:
the run with the latest (HLC, origin). A replay is answered with the winner's answer, and the
losers' messages are removed. Latest rather than earliest because a run its origin undoes (it
could not get W copies) is almost always the early one: the hung node's, timed out after it was
continued; the replay that answered the client came later.

The id reaches the store through a context variable set by the session around one command: every
store write made while it is set is that command's change (one write per command), and no store
method signature has to carry it.
"""

from __future__ import annotations

import contextvars
import json
import sqlite3
from dataclasses import dataclass
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
CREATE TABLE IF NOT EXISTS replay_runs (
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    origin TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    answer TEXT NOT NULL,
    adds TEXT NOT NULL,
    PRIMARY KEY (scope, id, origin, hlc)
);
CREATE INDEX IF NOT EXISTS replays_hlc ON replays(hlc);
CREATE INDEX IF NOT EXISTS replay_runs_hlc ON replay_runs(hlc);
"""

Key = tuple[str, str]  # (scope: the user, or SMTP_SCOPE; id)
Adds = list[list[Any]]  # [hlc, message.add payload] for each message a run added


@dataclass(frozen=True)
class Run:
    """One execution of a replayable change: where and when it was made, and what it added."""

    origin: str
    hlc: int
    answer: dict[str, Any]
    adds: Adds

    @property
    def rank(self) -> tuple[int, str]:
        return self.hlc, self.origin


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


def forget(conn: sqlite3.Connection, key: Key, origin: str | None = None) -> None:
    """An origin undid its run: its answer goes (and its run, if `origin` is known). Another
    origin's winning answer stays: its effect is still here."""
    if origin is not None:
        conn.execute("DELETE FROM replay_runs WHERE scope = ? AND id = ? AND origin = ?",
                     (*key, origin))
        best = _best(conn, key)
        if best is not None and best.origin != origin:
            return
    conn.execute("DELETE FROM replays WHERE scope = ? AND id = ?", key)


def record_run(conn: sqlite3.Connection, key: Key, run: Run) -> None:
    conn.execute("INSERT OR IGNORE INTO replay_runs VALUES (?, ?, ?, ?, ?, ?)",
                 (*key, run.origin, run.hlc, json.dumps(run.answer, sort_keys=True),
                  json.dumps(run.adds, sort_keys=True)))


def _best(conn: sqlite3.Connection, key: Key) -> Run | None:
    row = conn.execute(
        "SELECT origin, hlc, answer, adds FROM replay_runs WHERE scope = ? AND id = ? "
        "ORDER BY hlc DESC, origin DESC LIMIT 1", key).fetchone()
    return None if row is None else Run(str(row[0]), int(row[1]), dict(json.loads(row[2])),
                                        list(json.loads(row[3])))


def merge(conn: sqlite3.Connection, key: Key, run: Run) -> tuple[Run, Run] | None:
    """Take in a run heard from a peer. Returns (winner, loser) when this id now has two runs
    here (the caller removes the loser's messages), else None. The winner's answer is the one
    a replay gets from now on."""
    held = _best(conn, key)
    known = lookup(conn, key)
    record_run(conn, key, run)
    if known is None or held is None:
        # First run heard of here (or one recorded before runs were kept: first one stays).
        insert(conn, key, run.answer, run.hlc)
        return None
    if (held.origin, held.hlc) == (run.origin, run.hlc):
        return None
    if run.rank > held.rank:
        conn.execute("UPDATE replays SET answer = ?, hlc = ? WHERE scope = ? AND id = ?",
                     (json.dumps(run.answer, sort_keys=True), run.hlc, *key))
        return run, held
    return held, run


PRUNE_BATCH = 1000  # rows per transaction: the writer is never held long


def prune(conn: sqlite3.Connection, older_than: int, keep: int) -> int:
    """Forget replay ids (and their runs) stamped before HLC `older_than`, and all but the
    `keep` newest of each table; at most PRUNE_BATCH rows per table per call. A gateway replays
    within seconds of a failure, so a window of days keeps every replay that can still come;
    a forgotten id is executed afresh."""
    removed = 0
    for table in ("replays", "replay_runs"):
        removed += conn.execute(
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE hlc < ? "
            "ORDER BY hlc LIMIT ?)", (older_than, PRUNE_BATCH)).rowcount
        removed += conn.execute(
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY hlc DESC "
            "LIMIT ? OFFSET ?)", (PRUNE_BATCH, keep)).rowcount
    return removed
