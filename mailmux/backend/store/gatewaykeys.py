"""Gateway keys in the node database, replicated like users (see protocol/control/keys.py).

A key is added once under a name and revoked for good: a revoked name keeps its row (without
its secret) so that a late or re-shipped `gatewaykey.add` can never bring it back, whatever the
order records arrive in. Two nodes that issue the same name at once settle on the add with the
later (HLC, origin), so every replica ends up with the same secret.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailmux.backend.errors import ClientError

DDL = """
CREATE TABLE IF NOT EXISTS gateway_keys (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL,
    hlc INTEGER NOT NULL,
    origin TEXT NOT NULL
);
"""

Log = Callable[[str, dict[str, Any]], None]


class GatewayKeyExists(ClientError):
    """A gateway key of that name exists or was revoked (names are not reused)."""


class GatewayKeyNotFound(ClientError):
    """No live gateway key of that name."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    created: float
    revoked: float | None


def prepare(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def add(conn: sqlite3.Connection, log: Log, name: str, secret: str, hlc: int,
        origin: str) -> None:
    if conn.execute("SELECT 1 FROM gateway_keys WHERE name = ?", (name,)).fetchone():
        raise GatewayKeyExists(f"gateway key {name} exists or was revoked")
    conn.execute("INSERT INTO gateway_keys VALUES (?, ?, ?, NULL, ?, ?)",
                 (name, secret, time.time(), hlc, origin))
    log("gatewaykey.add", {"name": name, "secret": secret})


def revoke(conn: sqlite3.Connection, log: Log, name: str) -> None:
    cur = conn.execute("UPDATE gateway_keys SET revoked = ?, secret = '' WHERE name = ? "
                       "AND revoked IS NULL", (time.time(), name))
    if cur.rowcount == 0:
        raise GatewayKeyNotFound(f"no live gateway key {name}")
    log("gatewaykey.revoke", {"name": name})


def apply_add(conn: sqlite3.Connection, name: str, secret: str, hlc: int, origin: str) -> None:
    row = conn.execute("SELECT revoked, hlc, origin FROM gateway_keys WHERE name = ?",
                       (name,)).fetchone()
    if row is None:
        conn.execute("INSERT INTO gateway_keys VALUES (?, ?, ?, NULL, ?, ?)",
                     (name, secret, time.time(), hlc, origin))
    elif row[0] is None and (hlc, origin) > (row[1], row[2]):
        conn.execute("UPDATE gateway_keys SET secret = ?, hlc = ?, origin = ? WHERE name = ?",
                     (secret, hlc, origin, name))


def apply_revoke(conn: sqlite3.Connection, name: str, hlc: int, origin: str) -> None:
    now = time.time()
    conn.execute("INSERT INTO gateway_keys VALUES (?, '', ?, ?, ?, ?) ON CONFLICT (name) DO "
                 "UPDATE SET secret = '', revoked = coalesce(revoked, ?)",
                 (name, now, now, hlc, origin, now))


def listing(conn: sqlite3.Connection) -> list[KeyInfo]:
    rows = conn.execute("SELECT name, created, revoked FROM gateway_keys ORDER BY name")
    return [KeyInfo(str(r[0]), float(r[1]), None if r[2] is None else float(r[2]))
            for r in rows]


def live(conn: sqlite3.Connection) -> dict[str, bytes]:
    rows = conn.execute("SELECT name, secret FROM gateway_keys WHERE revoked IS NULL")
    return {str(r[0]): str(r[1]).encode() for r in rows if r[1]}
