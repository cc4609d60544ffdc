"""Board flags: every flag on a board post is the reader's own, except the moderators' ones.

A board (a shared folder) is read by many users, so one reader's `\\Seen`, `\\Flagged`, `$Junk`
or any keyword must not show for the others. Each reader's flags live beside the shared post:
`\\Seen` in `board_seen` (the unseen counts and indexes read it), every other one in
`board_flags`; `board_private` is both as one (user, mailbox, uid, flag) relation. The post's own
`flags` column holds only what every reader sees: `SHARED` (`\\Deleted`), which only the board's
moderators may set or clear, and which only they may expunge. Moderators are granted per board
with the CLI (`mailmux-backend board moderator add|remove|list`) and replicated as change
records; a grant and a removal settle by the later (HLC, origin) stamp on every node.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from mailmux.backend.errors import NotPermitted

SEEN = "\\Seen"
SHARED = frozenset({"\\Deleted"})

DDL = """
CREATE TABLE IF NOT EXISTS board_flags (
    user TEXT NOT NULL,
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    flag TEXT NOT NULL,
    PRIMARY KEY (user, mailbox_id, uid, flag)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS board_private (user, mailbox_id, uid, flag) AS
    SELECT user, mailbox_id, uid, '\\Seen' FROM board_seen
    UNION ALL SELECT user, mailbox_id, uid, flag FROM board_flags;
CREATE TABLE IF NOT EXISTS board_moderators (
    board TEXT NOT NULL,
    user TEXT NOT NULL,
    present INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (board, user)
);
"""

Log = Callable[[str, dict[str, Any]], None]


def prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def private_column(is_board: bool) -> str:
    """A column with the asking user's (the first parameter's) own flags on a board post, as
    space-separated text or NULL; the parameter stays in place elsewhere, so callers bind the
    same values whatever the mailbox."""
    if is_board:
        return ("(SELECT group_concat(p.flag, ' ') FROM board_private p WHERE p.user = ? AND "
                "p.mailbox_id = m.mailbox_id AND p.uid = m.uid)")
    return "(CASE WHEN ? IS NULL THEN NULL END)"


def private_flags(conn: sqlite3.Connection, user: str, mailbox_id: int,
                  uid: int) -> frozenset[str]:
    return frozenset(r[0] for r in conn.execute(
        "SELECT flag FROM board_private WHERE user = ? AND mailbox_id = ? AND uid = ?",
        (user, mailbox_id, uid)))


def set_private(conn: sqlite3.Connection, user: str, mailbox_id: int, uid: int,
                added: frozenset[str], removed: frozenset[str]) -> None:
    for flag in added - SHARED:
        if flag == SEEN:
            conn.execute("INSERT OR IGNORE INTO board_seen VALUES (?, ?, ?)",
                         (user, mailbox_id, uid))
        else:
            conn.execute("INSERT OR IGNORE INTO board_flags VALUES (?, ?, ?, ?)",
                         (user, mailbox_id, uid, flag))
    for flag in removed - SHARED:
        if flag == SEEN:
            conn.execute("DELETE FROM board_seen WHERE user = ? AND mailbox_id = ? AND uid = ?",
                         (user, mailbox_id, uid))
        else:
            conn.execute("DELETE FROM board_flags WHERE user = ? AND mailbox_id = ? AND uid = ? "
                         "AND flag = ?", (user, mailbox_id, uid, flag))


def apply_store(mode: str, old: frozenset[str], wanted: frozenset[str]) -> frozenset[str]:
    return (wanted if mode == "replace" else old | wanted if mode == "add" else old - wanted)


def board_store(mode: str, shared: frozenset[str], private: frozenset[str],
                wanted: frozenset[str], moderator: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(new shared, new private) flags of one post after a reader's STORE.

    Readers change their own flags only; naming a SHARED flag is for moderators (NOPERM)."""
    if wanted & SHARED and not moderator:
        raise NotPermitted("only the board's moderators may set or clear \\Deleted here")
    new_private = apply_store(mode, private, wanted - SHARED)
    if not moderator:
        return shared, new_private
    if mode == "replace":
        return (shared - SHARED) | (wanted & SHARED), new_private
    return apply_store(mode, shared, wanted & SHARED), new_private


# moderators --------------------------------------------------------------------------------


def is_moderator(conn: sqlite3.Connection, board: str, user: str) -> bool:
    return conn.execute("SELECT 1 FROM board_moderators WHERE board = ? AND user = ? AND "
                        "present = 1", (board, user)).fetchone() is not None


def set_moderator(conn: sqlite3.Connection, log: Log, board: str, user: str, present: bool,
                  hlc: int, origin: str) -> None:
    apply_moderator(conn, board, user, present, hlc, origin)
    log("board.moderator", {"board": board, "user": user, "present": present})


def apply_moderator(conn: sqlite3.Connection, board: str, user: str, present: bool, hlc: int,
                    origin: str) -> None:
    conn.execute(
        "INSERT INTO board_moderators VALUES (?, ?, ?, ?, ?) ON CONFLICT (board, user) DO "
        "UPDATE SET present = excluded.present, hlc = excluded.hlc, origin = excluded.origin "
        "WHERE (excluded.hlc, excluded.origin) > (board_moderators.hlc, board_moderators.origin)",
        (board, user, int(present), hlc, origin))


def moderators(conn: sqlite3.Connection, board: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT user FROM board_moderators WHERE board = ? AND present = 1 ORDER BY user",
        (board,))]
