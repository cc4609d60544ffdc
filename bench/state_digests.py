"""Cost of one anti-entropy digest pass over the state besides messages (statesync.py): the
per-kind digests a node computes for each peer every DIGEST_INTERVAL seconds, for a pool of N
users with the default mailboxes and subscriptions. Prints seconds per pass (one reader thread)
beside the message digests' pass (repair.py) over the same users' empty mailboxes.

    python bench/state_digests.py --users 5000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from mailmux.backend.store import repair, statesync
from mailmux.backend.store.sqlite import SqliteStore
from mailmux.backend.store.writer import Tx

MAILBOXES = ("INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive")


def _fill(tx: Tx, users: int) -> None:
    conn = tx.conn
    for i in range(users):
        user = f"user{i}@example.test"
        conn.execute("INSERT INTO users VALUES (?, 'hash', 0)", (user,))
        statesync.put(conn, statesync.USER, user, i + 1, "a", True)
        for n, name in enumerate(MAILBOXES):
            conn.execute("INSERT INTO mailboxes (owner, name, uidvalidity) VALUES (?, ?, ?)",
                         (user, name, 1000 + n))
            conn.execute("INSERT INTO subscriptions VALUES (?, ?)", (user, name))
            statesync.put(conn, statesync.MAILBOX, statesync.key(user, name, 1000 + n), i + 1,
                          "a", True)
            statesync.put(conn, statesync.SUB, statesync.key(user, name), i + 1, "a", True)


async def main(users: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteStore.open(Path(tmp) / "db.sqlite3", "a", ("example.test",)) as store:
            await store._write(lambda tx: _fill(tx, users))
            for name, fn in (("state (statesync.digests)", statesync.digests),
                             ("messages (repair.digests)", repair.digests)):
                start = time.perf_counter()
                for _ in range(rounds):
                    await store._read(fn)
                per = (time.perf_counter() - start) / rounds
                print(f"{users} users, {name}: {per:.3f} s per pass")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.rounds))
