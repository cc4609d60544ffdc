"""The node's mail store on SQLite: users, mailboxes, messages, boards and the change log.

Why SQLite with bodies inside: one database file per node in WAL mode with synchronous=FULL. A
message's body and its metadata are written in one transaction and made durable by one fsync, so
a crash can never leave half a message, a body without a row or a row without a body, and
replication ships rows. All writes go through one writer thread with group commit (`writer.py`);
reads run in worker threads on their own read-only connections, so the event loop never waits
for the disk — except reads of a few rows by key (`INLINE_ROWS`), which run on the event loop's
own read-only connection: they take microseconds, less than the hand-off to a worker thread and
back, and they are what every small FETCH, STORE and replay lookup makes.

Every mutation appends change-log records (origin node, sequence, hybrid-logical-clock time) in the
same transaction, and after the commit wakes the change-feed queues of the mailboxes it touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailmux.backend.errors import (
    CannotDo,
    MailboxExists,
    MailboxNotFound,
    NotPermitted,
    Unavailable,
    UserExists,
    UserNotFound,
)
from mailmux.backend.message.limits import check_keywords
from mailmux.backend.message.parsed import ParsedMessage
from mailmux.backend.message.search import IndexEntry, index_entry
from mailmux.backend.store import boardflags, gatewaykeys, history, names, replay, statesync
from mailmux.backend.store.hlc import COUNTER_BITS, HybridClock, wall_ms
from mailmux.backend.store.interface import (
    BOARD_OWNER,
    BOARD_PREFIX,
    DEFAULT_SPECIAL_USE,
    INLINE_ROWS,
    AppendResult,
    ChangeRecord,
    CopyResult,
    FlagChange,
    MailboxInfo,
    MessageMeta,
    SelectState,
    StoreResult,
    ViewChanges,
)
from mailmux.backend.store.login_cache import LoginCache
from mailmux.backend.store.passwords import hash_password, verify_password
from mailmux.backend.store.schema import SUBTREE, prepare
from mailmux.backend.store.search_sql import compile_key
from mailmux.backend.store.uid_cache import UidCache
from mailmux.backend.store.writer import Arrived, Touched, Tx, Writer
from mailmux.protocol.imap.commands import SearchKey

T = TypeVar("T")


class Fence(Protocol):
    """The home lease a change runs under (replication/home.py)."""

    async def confirm(self) -> bool: ...
log = logging.getLogger(__name__)
READ_DRAIN_TIMEOUT = 10.0  # seconds closing waits for running reads
# A SELECT answered on the event loop from kept UIDs: up to this many (a view that later
# changes them copies them, 2 MB, ~0.1 ms); a bigger mailbox's SELECT goes to a worker thread.
INLINE_SELECT_UIDS = 250_000
SEEN = "\\Seen"
RECENT = "\\Recent"
BOARD_ADDRESS_PREFIX = "board+"
_MAILBOX_COLUMNS = "id, owner, name, uidvalidity, uidnext, highestmodseq, special_use"


def _flags_text(flags: frozenset[str] | set[str]) -> str:
    return " ".join(sorted(f for f in flags if f != RECENT))


def _flags_set(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def _body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _new_guid() -> str:
    return uuid.uuid4().hex


def _copy_answer(result: CopyResult) -> dict[str, Any]:
    return {"uidvalidity": result.uidvalidity, "pairs": [list(p) for p in result.pairs]}


DEFAULT_LOGIN_CACHE_TTL = 60.0
_IN_LIMIT = 256  # beyond this many UIDs, one range scan beats a long IN list
INLINE_PARSE_BYTES = 16 * 1024  # messages up to this size are indexed on the event loop
# One FETCH response item per field of `flag_lines`, filled from its column.
_LINE_ITEMS = {"uid": "UID %s", "flags": "FLAGS (%s)", "modseq": "MODSEQ (%s)"}


def _index_of(body: bytes) -> IndexEntry:
    return index_entry(ParsedMessage.from_bytes(body))


def index_entries(bodies: dict[str, bytes]) -> dict[str, IndexEntry]:
    """SEARCH index entries of bodies, by hash (a MIME parse each)."""
    return {body_hash: _index_of(body) for body_hash, body in bodies.items()}


async def index_entries_before_commit(bodies: dict[str, bytes]) -> dict[str, IndexEntry]:
    """`index_entries`, made before a transaction rather than inside it (where the parse
    would hold the writer and every write queued behind it). A few small messages are parsed
    right here: a worker thread's wake-up costs more than their parse on a busy machine, and
    the parse holds the GIL in any thread. Larger ones go to a worker thread, so that the
    event loop is never held for long."""
    if sum(len(body) for body in bodies.values()) <= INLINE_PARSE_BYTES:
        return index_entries(bodies)
    return await asyncio.to_thread(index_entries, bodies)


def _rows_of(conn: sqlite3.Connection, select: str, params: tuple[Any, ...], mailbox_id: int,
             uids: Sequence[int]) -> Iterator[tuple[Any, ...]]:
    """Rows (`select` over `messages m`) of ascending `uids`, in one statement: an IN list
    for a few, one range scan filtered here for many (a FETCH 1:* is one contiguous range)."""
    if not uids:
        return
    if len(uids) <= _IN_LIMIT:
        yield from conn.execute(
            f"{select} WHERE m.mailbox_id = ? AND m.uid IN ({','.join('?' * len(uids))}) "
            "ORDER BY m.uid", (*params, mailbox_id, *uids))
        return
    wanted = set(uids) if len(uids) < uids[-1] - uids[0] + 1 else None
    for row in conn.execute(f"{select} WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ? "
                            "ORDER BY m.uid", (*params, mailbox_id, uids[0], uids[-1])):
        if wanted is None or row[0] in wanted:
            yield row


def _with_recent(uids: str, flags: list[str], recent: frozenset[int]) -> list[str]:
    """`flags` (one text per UID of the comma-joined `uids`) with \\Recent added, sorted in,
    for the UIDs in `recent` (a session's first sync after a restart has them all)."""
    if not recent:
        return flags
    marked = {str(u) for u in recent}
    return [" ".join(sorted([*text.split(), RECENT])) if uid in marked else text
            for uid, text in zip(uids.split(","), flags, strict=True)]


def _board_seen(owner: str) -> str:
    """A column with the asking user's (the first parameter's) own flags on a board post
    (text or NULL; see boardflags.py); the parameter stays in place for ordinary mailboxes so
    callers bind the same values."""
    return boardflags.private_column(owner == BOARD_OWNER)



def _mailbox_exists(conn: sqlite3.Connection, owner: str, name: str) -> bool:
    return conn.execute("SELECT 1 FROM mailboxes WHERE owner = ? AND name = ?",
                        (owner, name)).fetchone() is not None


class SqliteStore:
    def __init__(self, db_path: Path, node_id: str, domains: tuple[str, ...]) -> None:
        self.db_path = db_path
        self.node_id = node_id
        self.domains = tuple(d.lower() for d in domains)
        self.clock = HybridClock()
        self._listeners: dict[int, set[asyncio.Queue[int]]] = {}
        self.wakes = 0  # change-feed wake-ups sent (tests count them)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        # Reads running in worker threads; closing waits for them, because closing a
        # connection another thread is stepping crashes the process (seen on SIGINT).
        self._reading = 0
        self._reads_done = threading.Condition(self._readers_lock)
        self._closed = False
        self._writer: Writer | None = None
        self._inline: sqlite3.Connection | None = None  # the event loop's reader
        self._trace: Callable[[str], None] | None = None
        # Successful logins, for `auth_cache_ttl` (the node sets it from its config).
        self.logins = LoginCache(DEFAULT_LOGIN_CACHE_TTL)
        self._steps: Callable[[], int] | None = None
        self._uid_cache = UidCache()
        self.origin = node_id
        # Replication installs these: called after every commit, and before acknowledging an
        # append/delivery (raising Unavailable when the required copies cannot be made).
        self.commit_hooks: list[Callable[[], None]] = []
        # Called with the messages a commit took in from peers (`writer.Arrived`): the IMAP
        # server's \Recent claims, so a replica that becomes home does not hand them out again.
        self.arrival_hooks: list[Callable[[Arrived], None]] = []
        self.copies_hook: Callable[[bytes | None, int], Awaitable[None]] | None = None
        # Refuses (raises Unavailable) before a change when its copies cannot be made anyway,
        # so that a change which cannot be undone is not made at all.
        self.precheck_hook: Callable[[bytes | None], None] | None = None
        # (this node's index, pool size): the UIDs this node gives out are those equal to its
        # index modulo the pool size, so two nodes can never give one UID to two messages
        # (docs/consistency.md). Replication sets it; a lone node uses every UID.
        self.uid_slot: tuple[int, int] = (0, 1)
        # The home lease (replication/home.py): held around every change of a user, so that
        # only the user's home commits; the epoch goes into the records (a deposed home's
        # clashing add loses to the newer epoch's). `interest_hook` claims at login.
        self.home_hook: Callable[[Sequence[str]], AbstractAsyncContextManager[Fence]] | None = None
        self.home_epoch: Callable[[str], int] = lambda user: 0
        self.home_now: Callable[[str], bool] = lambda user: False
        self.interest_hook: Callable[[str], None] | None = None
        # Before a sync point on a node that is not the user's home: catch up with what a
        # majority holds (replication/barrier.py).
        self.read_barrier_hook: Callable[[str], Awaitable[None]] | None = None
        # Deliveries split by the recipients' homes (replication/routing.py).
        self.route_hook: Callable[[Sequence[str], bytes, str],
                                  Awaitable[list[AppendResult]]] | None = None

    # lifecycle ----------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, db_path: Path, node_id: str, domains: tuple[str, ...]
    ) -> AsyncIterator[SqliteStore]:
        store = cls(Path(db_path), node_id, domains)
        await store._start()
        try:
            yield store
        finally:
            await store._close()

    async def _start(self) -> None:
        conn = await asyncio.to_thread(self._connect_writer)
        self._writer = Writer(conn, asyncio.get_running_loop(), self._notify)

    def _connect_writer(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        prepare(conn)  # executescript commits on its own; the DDL is idempotent
        replay.prepare(conn)
        gatewaykeys.prepare(conn)
        boardflags.prepare(conn)
        statesync.prepare(conn)
        dropped = statesync.sweep_orphans(conn)
        if dropped:
            log.warning("dropped %d row(s) of mailboxes that no longer exist (deleted by hand?)",
                        dropped)
        row = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        if row is None:
            # A wiped node comes back as a new origin: peers still hold its old history
            # under the old name and ship it back, while its new changes never collide.
            conn.execute("INSERT INTO meta VALUES ('origin', ?)",
                         (f"{self.node_id}-{uuid.uuid4().hex[:8]}",))
            row = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        self.origin = str(row[0])
        # MODSEQs come from this clock: it must start past every one already given out.
        row = conn.execute("SELECT max(hlc) FROM changelog").fetchone()
        highest = conn.execute("SELECT max(highestmodseq) FROM mailboxes").fetchone()
        self.clock = HybridClock(last=max(int(row[0] or 0), int(highest[0] or 0)))
        return conn

    async def _close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        await asyncio.to_thread(self._close_readers)
        # Closed on the loop thread, the only one that uses it: no read can be mid-step.
        inline, self._inline = self._inline, None
        if inline is not None:
            inline.close()

    def _close_readers(self) -> None:
        with self._readers_lock:
            self._closed = True
            for conn in self._readers:
                conn.interrupt()  # the one call SQLite allows from another thread
            if not self._reads_done.wait_for(lambda: self._reading == 0,
                                             timeout=READ_DRAIN_TIMEOUT):
                log.error("store %s: %d reads still running at close; leaving their "
                          "connections open", self.db_path, self._reading)
                return
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    # plumbing -------------------------------------------------------------------------------

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            f"file:{self.db_path}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA busy_timeout=10000")
        self._instrument(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_reader()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def trace(self, callback: Callable[[str], None] | None,
              steps: Callable[[], int] | None = None) -> None:
        """Call `callback` with every SQL statement any connection of this store runs, and
        `steps` every 100 SQLite VM instructions (tests count both: a hot path's statements
        and work must not grow with the mailbox)."""
        self._trace, self._steps = callback, steps
        with self._readers_lock:
            conns = [*self._readers, *([self._writer.conn] if self._writer else []),
                     *([self._inline] if self._inline else [])]
        for conn in conns:
            self._instrument(conn)

    def _instrument(self, conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(self._trace)
        conn.set_progress_handler(self._steps, 100)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._readers_lock:
                if self._closed:
                    raise Unavailable("the store is closed")
                self._reading += 1
            try:
                conn = self._reader()
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
            finally:
                with self._readers_lock:
                    self._reading -= 1
                    self._reads_done.notify_all()

        return await asyncio.to_thread(run)

    def _read_inline(self, fn: Callable[[sqlite3.Connection], T], *, statements: int = 1) -> T:
        """A read of at most INLINE_ROWS rows by key, on the event loop's connection. In WAL
        mode a reader never waits for the writer, so this is bounded by the rows it names.
        Several statements share one read transaction (one snapshot), as in `_read`."""
        if self._closed or self._writer is None:
            raise Unavailable("the store is closed")
        conn = self._inline
        if conn is None:
            conn = self._inline = self._connect_reader()
        if statements == 1:
            return fn(conn)  # one statement is its own snapshot
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    async def _write(self, fn: Callable[[Tx], T], source: object = None) -> T:
        return await self._submit(fn, source)

    def _submit(self, fn: Callable[[Tx], T], source: object = None) -> asyncio.Future[T]:
        """Queue a write at once (writes commit in the order queued); await the future."""
        assert self._writer is not None, "the store is closed"
        return self._writer.submit(fn, source)

    async def _change(self, job: Callable[[Tx], T], *, users: Sequence[str] = (),
                      body: bytes | None = None,
                      undo: Callable[[Tx, T], None] | None = None,
                      source: object = None) -> T:
        """Run a change as the home of `users`, and return only once as many nodes as it needs
        hold it (W copies: by importance for a message `body`, `normal` otherwise). If the
        copies cannot be made, or the lease was lost meanwhile, the change is undone where it
        can be — exactly its own rows, never anything matched by content — and Unavailable is
        raised. `source` is the change feed of the session making the change, when that
        session tells its client about the change itself: the commit does not wake it."""
        if self.home_hook is None or not users:
            return await self._change_copied(job, body, undo, None, source)
        async with self.home_hook(users) as fence:
            return await self._change_copied(job, body, undo, fence, source)

    async def _change_copied(self, job: Callable[[Tx], T], body: bytes | None,
                             undo: Callable[[Tx, T], None] | None, fence: Fence | None,
                             source: object = None) -> T:
        if self.precheck_hook is not None:
            self.precheck_hook(body)

        def run(tx: Tx) -> tuple[T, int]:
            return job(tx), tx.logged

        result, seq = await self._write(run, source)
        if seq and self.copies_hook is not None:
            try:
                await self.copies_hook(body, seq)
                if fence is not None and not await fence.confirm():
                    # Deposed while the copies were made (a hang, a partition): another home
                    # may have used the same UIDs by now, so this change must not stand.
                    raise Unavailable("this server lost the mailbox's home role during the "
                                      "change; try again")
            except Unavailable:
                if undo is not None:
                    await self._write(lambda tx: undo(tx, result))
                raise
        return result

    def _remember(self, tx: Tx, key: replay.Key | None, answer: dict[str, Any]) -> None:
        """Record a replay id's answer with the change, and ship it with the change."""
        if key is not None:
            hlc = self.clock.now()
            replay.insert(tx.conn, key, answer, hlc)
            replay.record_run(tx.conn, key, replay.Run(self.origin, hlc, answer, tx.adds))
            self._log(tx, "replay", {"scope": key[0], "id": key[1], "answer": answer,
                                     "adds": tx.adds}, hlc=hlc)

    def _forget(self, tx: Tx, key: replay.Key | None) -> None:
        """An undone change has no answer to replay: a replay must do it afresh."""
        if key is not None:
            replay.forget(tx.conn, key, self.origin)
            self._log(tx, "replay.forget", {"scope": key[0], "id": key[1]})

    async def read_barrier(self, user: str) -> None:
        """Hold every change of `user` acknowledged anywhere before this call, as far as a
        bounded wait allows (a no-op on the user's home and on a lone node)."""
        if self.read_barrier_hook is not None:
            await self.read_barrier_hook(user)

    async def prune_replays(self, keep: float, max_rows: int) -> int:
        """Forget replay ids older than `keep` seconds and beyond the `max_rows` newest, in
        short transactions; returns the rows removed."""
        cutoff = (wall_ms() - int(keep * 1000)) << COUNTER_BITS
        total = 0
        while removed := await self._write(lambda tx: replay.prune(tx.conn, cutoff, max_rows)):
            total += removed
        return total

    async def prune_expunged(self, keep: float, max_rows: int) -> int:
        """Prune the QRESYNC history (history.py) older than `keep` seconds and beyond the
        `max_rows` newest per mailbox, in short transactions; returns the entries removed."""
        cutoff = (wall_ms() - int(keep * 1000)) << COUNTER_BITS
        total = 0
        while removed := await self._write(lambda tx: history.prune(tx.conn, cutoff, max_rows)):
            total += removed
        return total

    async def replay_answer(self, scope: str, replay_id: str) -> dict[str, Any] | None:
        # one row by primary key, before every replayable command the gateway relays
        return self._read_inline(lambda c: replay.lookup(c, (scope.lower(), replay_id)))

    def _log(self, tx: Tx, kind: str, payload: dict[str, Any], hlc: int | None = None) -> None:
        """Append a change record; `hlc` is the change's MODSEQ when it has one (a message
        change's MODSEQ is its record's HLC, so every replica gives it the same one)."""
        conn = tx.conn
        # one statement per record, not a read and a write (every change pays it)
        row = conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                           "WHERE key = 'seq' RETURNING value").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('seq', '1')")
        seq = int(row[0]) if row else 1
        stamp = self.clock.now() if hlc is None else hlc
        conn.execute(
            "INSERT INTO changelog VALUES (?, ?, ?, ?, ?)",
            (self.origin, seq, stamp, kind, json.dumps(payload, sort_keys=True)),
        )
        tx.logged = seq
        if kind == "message.add":  # what a replay-id run added, should two runs meet
            tx.adds.append([stamp, payload])
        # The content registers anti-entropy compares, stamped as a peer applying this record
        # stamps them (statesync.py); a local change is the latest, so it always stamps.
        statesync.before(conn, kind, payload, stamp, self.origin)
        statesync.after(conn, kind, payload, stamp, self.origin)

    def _notify(self, touched: Touched, arrived: Arrived | None = None) -> None:
        for hook in self.commit_hooks:
            hook()
        if arrived:
            for arrival in self.arrival_hooks:
                arrival(arrived)
        for mailbox_id, sources in touched.items():
            for q in self._listeners.get(mailbox_id, ()):
                # A session is not woken by a commit that holds only its own change: it has
                # told its client already, and waking it costs a catch-up read per command.
                if len(sources) != 1 or q not in sources:
                    self.wakes += 1
                    q.put_nowait(mailbox_id)

    def listen(self, mailbox_id: int) -> asyncio.Queue[int]:
        q: asyncio.Queue[int] = asyncio.Queue()
        self._listeners.setdefault(mailbox_id, set()).add(q)
        return q

    def unlisten(self, mailbox_id: int, queue: asyncio.Queue[int]) -> None:
        listeners = self._listeners.get(mailbox_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._listeners[mailbox_id]

    # users ------------------------------------------------------------------------------------

    async def add_user(self, user: str, password: str) -> None:
        user = names.user_id(user, self.domains)
        hashed = await hash_password(password)

        def job(tx: Tx) -> None:
            try:
                tx.conn.execute("INSERT INTO users VALUES (?, ?, ?)", (user, hashed, time.time()))
            except sqlite3.IntegrityError:
                raise UserExists(f"user {user} already exists") from None
            self._log(tx, "user.add", {"user": user, "hash": hashed})
            self._create(tx, user, "INBOX", None)
            for name, use in DEFAULT_SPECIAL_USE.items():
                self._create(tx, user, name, use)

        await self._write(job)

    async def set_password(self, user: str, password: str) -> None:
        user = user.lower()
        hashed = await hash_password(password)

        def job(tx: Tx) -> None:
            cur = tx.conn.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                                  (hashed, user))
            if cur.rowcount == 0:
                raise UserNotFound(f"no user {user}")
            self._log(tx, "user.passwd", {"user": user, "hash": hashed})

        await self._write(job)
        self.logins.drop(user)

    async def delete_user(self, user: str) -> None:
        user = user.lower()

        def job(tx: Tx) -> None:
            if tx.conn.execute("DELETE FROM users WHERE name = ?", (user,)).rowcount == 0:
                raise UserNotFound(f"no user {user}")
            for (mailbox_id,) in tx.conn.execute(
                "SELECT id FROM mailboxes WHERE owner = ?", (user,)
            ).fetchall():
                tx.touched.add(mailbox_id)
            tx.conn.execute("DELETE FROM mailboxes WHERE owner = ?", (user,))
            tx.conn.execute("DELETE FROM subscriptions WHERE user = ?", (user,))
            tx.conn.execute("DELETE FROM board_seen WHERE user = ?", (user,))
            tx.conn.execute("DELETE FROM board_flags WHERE user = ?", (user,))
            self._collect_bodies(tx)
            self._log(tx, "user.del", {"user": user})

        await self._write(job)
        self.logins.drop(user)

    async def list_users(self) -> list[str]:
        return await self._read(
            lambda c: [r[0] for r in c.execute("SELECT name FROM users ORDER BY name")]
        )

    async def has_user(self, user: str) -> bool:
        return await self._read(
            lambda c: c.execute("SELECT 1 FROM users WHERE name = ?", (user.lower(),)).fetchone()
            is not None
        )

    async def authenticate(self, user: str, password: str) -> bool:
        user = user.lower()
        row = await self._read(
            lambda c: c.execute(
                "SELECT password_hash FROM users WHERE name = ?", (user,)
            ).fetchone()
        )
        stored = str(row[0]) if row else None
        if self.logins.hit(user, password, stored):
            if self.interest_hook is not None:
                self.interest_hook(user)
            return True
        ok = await verify_password(stored, password)
        if ok and stored is not None:
            self.logins.remember(user, password, stored)
        if ok and self.interest_hook is not None:
            self.interest_hook(user)  # claim the home lease before the first change needs it
        return ok

    # gateway keys (store/gatewaykeys.py) -------------------------------------------------------

    async def add_gateway_key(self, name: str, secret: str) -> None:
        def job(tx: Tx) -> None:
            # The key's stamp is its record's HLC, as on the replicas applying the record.
            hlc = self.clock.now()
            gatewaykeys.add(tx.conn, lambda kind, payload: self._log(tx, kind, payload, hlc),
                            name, secret, hlc, self.origin)

        await self._write(job)

    async def revoke_gateway_key(self, name: str) -> None:
        def job(tx: Tx) -> None:
            gatewaykeys.revoke(tx.conn, lambda kind, payload: self._log(tx, kind, payload), name)

        await self._write(job)

    async def gateway_keys(self) -> list[gatewaykeys.KeyInfo]:
        return await self._read(gatewaykeys.listing)

    async def live_gateway_keys(self) -> dict[str, bytes]:
        return await self._read(gatewaykeys.live)

    # boards -----------------------------------------------------------------------------------

    async def add_board(self, name: str) -> None:
        board = names.board_name(name)

        def job(tx: Tx) -> None:
            self._create(tx, BOARD_OWNER, BOARD_PREFIX + board, None)

        await self._write(job)

    async def set_moderator(self, board: str, user: str, present: bool) -> None:
        """Grant (or withdraw) moderation of `board` (a board name) to `user`."""
        mailbox = BOARD_PREFIX + names.board_name(board)
        user = user.lower()

        def job(tx: Tx) -> None:
            if not _mailbox_exists(tx.conn, BOARD_OWNER, mailbox):
                raise MailboxNotFound(f"no board {board}")
            if present and not tx.conn.execute("SELECT 1 FROM users WHERE name = ?",
                                               (user,)).fetchone():
                raise UserNotFound(f"no user {user}")
            hlc = self.clock.now()  # the grant's stamp is its record's HLC, as on replicas
            boardflags.set_moderator(tx.conn,
                                     lambda kind, payload: self._log(tx, kind, payload, hlc),
                                     mailbox, user, present, hlc, self.origin)

        await self._write(job)

    async def moderators(self, board: str) -> list[str]:
        mailbox = BOARD_PREFIX + names.board_name(board)
        return await self._read(lambda c: boardflags.moderators(c, mailbox))

    async def list_boards(self) -> list[str]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT name FROM mailboxes WHERE owner = ? ORDER BY name", (BOARD_OWNER,)
            ).fetchall()
        )
        return [r[0][len(BOARD_PREFIX):] for r in rows]

    async def has_board(self, name: str) -> bool:
        return await self._read(
            lambda c: c.execute(
                "SELECT 1 FROM mailboxes WHERE owner = ? AND name = ?",
                (BOARD_OWNER, BOARD_PREFIX + name.lower()),
            ).fetchone() is not None
        )

    # mailboxes ----------------------------------------------------------------------------------

    @staticmethod
    def _owner(user: str, name: str) -> str:
        return BOARD_OWNER if names.is_board(name) else user.lower()

    def _next_uidvalidity(self, tx: Tx) -> int:
        row = tx.conn.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        value = max(int(time.time()), int(row[0]) + 1 if row else 0)
        tx.conn.execute("INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (str(value),))
        return value

    def _create(self, tx: Tx, owner: str, name: str, special_use: str | None,
                subscribe: bool = True) -> int:
        uidvalidity = self._next_uidvalidity(tx)
        try:
            cur = tx.conn.execute(
                "INSERT INTO mailboxes (owner, name, uidvalidity, special_use) VALUES (?,?,?,?)",
                (owner, name, uidvalidity, special_use),
            )
        except sqlite3.IntegrityError:
            raise MailboxExists(f"mailbox {name} already exists") from None
        subscribe = subscribe and owner != BOARD_OWNER
        if subscribe:
            tx.conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?, ?)", (owner, name))
        self._log(tx, "board.add" if owner == BOARD_OWNER else "mailbox.create", {
            "owner": owner, "name": name, "uidvalidity": uidvalidity, "special_use": special_use,
            "subscribed": subscribe,
        })
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _mailbox_row(self, conn: sqlite3.Connection, user: str, name: str) -> tuple[Any, ...]:
        name = names.mailbox_name(name) if not names.is_board(name) else name
        row = conn.execute(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE owner = ? AND name = ?",
            (self._owner(user, name), name),
        ).fetchone()
        if row is None:
            raise MailboxNotFound(f"no mailbox {name}")
        return tuple(row)

    def _info(self, conn: sqlite3.Connection, user: str, row: tuple[Any, ...]) -> MailboxInfo:
        mailbox_id, owner, name = row[0], row[1], row[2]
        count, shared_seen, size = conn.execute(
            "SELECT messages, seen, size FROM mailbox_counts WHERE mailbox_id = ?",
            (mailbox_id,),
        ).fetchone() or (0, 0, 0)
        if owner == BOARD_OWNER:
            seen = conn.execute(
                "SELECT count(*) FROM board_seen b JOIN messages m ON m.mailbox_id = b.mailbox_id"
                " AND m.uid = b.uid WHERE b.user = ? AND b.mailbox_id = ?",
                (user.lower(), mailbox_id),
            ).fetchone()[0]
        else:
            seen = shared_seen
        subscribed = conn.execute(
            "SELECT 1 FROM subscriptions WHERE user = ? AND name = ?", (user.lower(), name)
        ).fetchone() is not None
        return MailboxInfo(
            id=mailbox_id, owner=owner, name=name, uidvalidity=row[3], uidnext=row[4],
            highestmodseq=row[5], special_use=row[6], subscribed=subscribed, messages=count,
            unseen=count - seen, size=size,
        )

    async def list_mailboxes(self, user: str) -> list[MailboxInfo]:
        def read(conn: sqlite3.Connection) -> list[MailboxInfo]:
            rows = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE owner IN (?, ?) ORDER BY name",
                (user.lower(), BOARD_OWNER),
            ).fetchall()
            return [self._info(conn, user, tuple(r)) for r in rows]

        return await self._read(read)

    async def subscriptions(self, user: str) -> list[str]:
        return await self._read(lambda c: [r[0] for r in c.execute(
            "SELECT name FROM subscriptions WHERE user = ?", (user.lower(),)).fetchall()])

    async def get_mailbox(self, user: str, name: str) -> MailboxInfo:
        return await self._read(lambda c: self._info(c, user, self._mailbox_row(c, user, name)))

    async def create_mailbox(
        self, user: str, name: str, special_use: str | None = None
    ) -> None:
        if names.is_board(name):
            raise NotPermitted("boards are created by the administrator")
        name = names.mailbox_name(name)
        if name == "INBOX":
            raise MailboxExists("INBOX always exists")

        key = replay.current(user)

        def job(tx: Tx) -> int:
            replay.check(tx, key)
            # RFC 3501 6.3.3: CREATE does not subscribe (only the mailboxes a new user starts
            # with are subscribed)
            mailbox_id = self._create(tx, user.lower(), name, special_use, subscribe=False)
            self._remember(tx, key, {})
            return mailbox_id

        def undo(tx: Tx, mailbox_id: int) -> None:
            # Only the incarnation this change made, and only while nothing was put in it.
            if tx.conn.execute("SELECT 1 FROM messages WHERE mailbox_id = ?",
                               (mailbox_id,)).fetchone() is None:
                row = tx.conn.execute("SELECT uidvalidity FROM mailboxes WHERE id = ?",
                                      (mailbox_id,)).fetchone()
                if row is not None:
                    tx.conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
                    tx.conn.execute("DELETE FROM subscriptions WHERE user = ? AND name = ?",
                                    (user.lower(), name))
                    tx.touched.add(mailbox_id)
                    self._log(tx, "mailbox.delete", {"owner": user.lower(), "name": name,
                                                     "uidvalidity": row[0]})
            self._forget(tx, key)

        await self._change(job, users=(user,), undo=undo)

    async def delete_mailbox(self, user: str, name: str) -> None:
        if names.is_board(name):
            raise NotPermitted("boards cannot be deleted by users")
        name = names.mailbox_name(name)
        if name == "INBOX":
            raise CannotDo("INBOX cannot be deleted")

        key = replay.current(user)

        def job(tx: Tx) -> None:
            replay.check(tx, key)
            row = self._mailbox_row(tx.conn, user, name)
            self._remember(tx, key, {})
            tx.conn.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))
            # the subscription stays (RFC 3501 6.3.6), as on replicas applying this delete
            tx.touched.add(row[0])
            self._collect_bodies(tx)
            self._log(tx, "mailbox.delete", {"owner": user.lower(), "name": name,
                                             "uidvalidity": row[3]})

        await self._change(job, users=(user,))

    async def rename_mailbox(self, user: str, old: str, new: str) -> None:
        if names.is_board(old) or names.is_board(new):
            raise NotPermitted("boards cannot be renamed by users")
        old, new = names.mailbox_name(old), names.mailbox_name(new)
        owner = user.lower()
        key = replay.current(user)

        def job(tx: Tx) -> None:
            replay.check(tx, key)
            row = self._mailbox_row(tx.conn, owner, old)
            if tx.conn.execute("SELECT 1 FROM mailboxes WHERE owner = ? AND name = ?",
                               (owner, new)).fetchone():
                raise MailboxExists(f"mailbox {new} already exists")
            if new == old or new.startswith(old + "/"):
                raise CannotDo("cannot rename a mailbox into itself")
            self._remember(tx, key, {})
            if old == "INBOX":
                self._rename_inbox(tx, owner, row, new)
                return
            children = tx.conn.execute(SUBTREE, (owner, old, old + "/")).fetchall()
            clashes = [new + name[len(old):] for _, name in children if tx.conn.execute(
                "SELECT 1 FROM mailboxes WHERE owner = ? AND name = ?",
                (owner, new + name[len(old):])).fetchone()]
            if clashes:
                raise MailboxExists(f"mailbox {clashes[0]} already exists")
            for mailbox_id, name in children:
                renamed = new + name[len(old):]
                tx.conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (renamed, mailbox_id))
                tx.conn.execute("UPDATE subscriptions SET name = ? WHERE user = ? AND name = ?",
                                (renamed, owner, name))
                tx.touched.add(mailbox_id)
            self._log(tx, "mailbox.rename", {"owner": owner, "old": old, "new": new})

        await self._change(job, users=(user,))

    def _rename_inbox(self, tx: Tx, owner: str, inbox: tuple[Any, ...], new: str) -> None:
        """RFC 3501: RENAME INBOX moves its messages to the new mailbox and leaves it empty."""
        dest = self._create(tx, owner, new, None)
        uids = [r[0] for r in tx.conn.execute(
            "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (inbox[0],))]
        self._copy_rows(tx, owner, inbox[0], uids, dest, move=True)

    async def set_subscribed(self, user: str, name: str, subscribed: bool) -> None:
        name = name if names.is_board(name) else names.mailbox_name(name)
        key = replay.current(user)

        def job(tx: Tx) -> bool:
            replay.check(tx, key)
            was = tx.conn.execute("SELECT 1 FROM subscriptions WHERE user = ? AND name = ?",
                                  (user.lower(), name)).fetchone() is not None
            subscribe(tx, subscribed)
            self._remember(tx, key, {})
            return was

        def subscribe(tx: Tx, on: bool) -> None:
            if on:
                tx.conn.execute("INSERT OR IGNORE INTO subscriptions VALUES (?, ?)",
                                (user.lower(), name))
            else:
                tx.conn.execute("DELETE FROM subscriptions WHERE user = ? AND name = ?",
                                (user.lower(), name))
            self._log(tx, "mailbox.subscribe", {"user": user.lower(), "name": name,
                                                "subscribed": on})

        def undo(tx: Tx, was: bool) -> None:
            if was != subscribed:
                subscribe(tx, was)
            self._forget(tx, key)

        await self._change(job, users=(user,), undo=undo)

    # messages -----------------------------------------------------------------------------------

    def _add_message(
        self, tx: Tx, mailbox: tuple[Any, ...], body: bytes | None, body_hash: str,
        flags: frozenset[str], internaldate: datetime, guid: str, user: str | None,
        index: IndexEntry | None = None,
    ) -> AppendResult:
        mailbox_id, owner = mailbox[0], mailbox[1]
        conn = tx.conn
        # A user's UIDs come from the user's home, in order; a board's (no home), or any
        # when no home lease is in force (a store used without replication's hooks), from
        # this node's residue class.
        homed = owner != BOARD_OWNER and self.home_hook is not None
        slot, pool = (0, 1) if homed else self.uid_slot
        modseq = self.clock.now()
        (uid,) = conn.execute(
            "UPDATE mailboxes SET uidnext = uidnext + ((? - uidnext % ?) % ? + ?) % ? + 1, "
            "highestmodseq = max(highestmodseq, ?) WHERE id = ? RETURNING uidnext - 1",
            (slot, pool, pool, pool, pool, modseq, mailbox_id),
        ).fetchone()
        if body is not None:
            conn.execute("INSERT OR IGNORE INTO bodies VALUES (?, ?)", (body_hash, body))
            self.index_body(conn, body_hash, body, index)
        size = conn.execute("SELECT length(data) FROM bodies WHERE hash = ?",
                            (body_hash,)).fetchone()[0]
        # A board post starts with no shared flags: what the poster asked for (other than
        # \Seen, theirs alone) would otherwise show for every reader.
        shared = frozenset() if owner == BOARD_OWNER else flags
        conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (mailbox_id, uid, guid, body_hash, internaldate.isoformat(), size,
             _flags_text(set(shared)), modseq),
        )
        if owner == BOARD_OWNER and SEEN in flags and user is not None:
            conn.execute("INSERT OR IGNORE INTO board_seen VALUES (?, ?, ?)",
                         (user.lower(), mailbox_id, uid))
        tx.touched.add(mailbox_id)
        self._log(tx, "message.add", {
            "owner": owner, "mailbox": mailbox[2], "uidvalidity": mailbox[3], "uid": uid,
            "guid": guid, "flags": sorted(shared), "internaldate": internaldate.isoformat(),
            "body": body_hash, "size": size, "uidnext": uid + 1,
            "epoch": self.home_epoch(owner),
        }, hlc=modseq)
        return AppendResult(mailbox_id, mailbox[3], uid, guid, duplicate=False)

    async def append(
        self, user: str, mailbox: str, body: bytes, flags: Sequence[str] = (),
        internaldate: datetime | None = None, guid: str | None = None,
    ) -> AppendResult:
        when = internaldate or datetime.now(UTC)
        body_hash = _body_hash(body)
        # Every APPEND makes a message (RFC 3501), so the GUID names this instance, never its
        # content; a gateway replay is recognised by its replay id instead.
        message_guid = guid or _new_guid()
        key = replay.current(user)

        index = (await index_entries_before_commit({body_hash: body}))[body_hash]

        def job(tx: Tx) -> AppendResult:
            replay.check(tx, key)
            row = self._mailbox_row(tx.conn, user, mailbox)
            result = self._add_message(tx, row, body, body_hash, frozenset(flags), when,
                                       message_guid, user, index)
            self._remember(tx, key, {"uidvalidity": result.uidvalidity, "uid": result.uid})
            return result

        def undo(tx: Tx, result: AppendResult) -> None:
            self._take_back(tx, [result])
            self._forget(tx, key)

        return await self._change(job, users=(user,), body=body, undo=undo)

    def _recipient_mailbox(self, conn: sqlite3.Connection, recipient: str) -> tuple[Any, ...]:
        address = recipient.lower()
        local, _, domain = address.rpartition("@")
        if local.startswith(BOARD_ADDRESS_PREFIX) and domain in self.domains:
            name = BOARD_PREFIX + local[len(BOARD_ADDRESS_PREFIX):]
            row = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE owner = ? AND name = ?",
                (BOARD_OWNER, name),
            ).fetchone()
        else:
            row = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE owner = ? AND name = 'INBOX'",
                (address,),
            ).fetchone()
        if row is None:
            raise UserNotFound(f"no such user {recipient}")
        return tuple(row)

    async def deliver(
        self, recipients: Sequence[str], body: bytes, guid: str
    ) -> list[AppendResult]:
        """Store a delivery. With replication, each recipient's copy is committed by that
        user's home: a share for users homed elsewhere goes there (`route_hook`,
        replication/routing.py), so no lease moves for one message."""
        if self.route_hook is not None and replay.current(replay.SMTP_SCOPE) is None:
            return await self.route_hook(recipients, body, guid)
        return await self.deliver_here(recipients, body, guid)

    async def deliver_here(
        self, recipients: Sequence[str], body: bytes, guid: str
    ) -> list[AppendResult]:
        """Store a delivery on this node, as the home of every recipient (taking the leases
        it does not hold)."""
        now = datetime.now(UTC)
        body_hash = _body_hash(body)
        key = replay.current(replay.SMTP_SCOPE)

        index = (await index_entries_before_commit({body_hash: body}))[body_hash]

        def job(tx: Tx) -> list[AppendResult]:
            replay.check(tx, key)
            rows = {row[0]: row for row in
                    (self._recipient_mailbox(tx.conn, r) for r in recipients)}
            results = []
            for row in rows.values():
                # The GUID is this transaction's own (made by the intake, never taken from the
                # message), so it only meets itself: LMTP's per-recipient delivery of a
                # recipient named twice stores one copy.
                held = tx.conn.execute("SELECT uid FROM messages WHERE mailbox_id = ? AND "
                                       "guid = ?", (row[0], guid)).fetchone()
                results.append(
                    AppendResult(row[0], row[3], held[0], guid, duplicate=True) if held
                    else self._add_message(tx, row, body, body_hash, frozenset(), now, guid,
                                           None, index))
            self._remember(tx, key, {"guid": guid})
            return results

        def undo(tx: Tx, results: list[AppendResult]) -> None:
            self._take_back(tx, [r for r in results if not r.duplicate])
            self._forget(tx, key)

        users = [r.lower() for r in recipients
                 if not r.lower().startswith(BOARD_ADDRESS_PREFIX)]
        return await self._change(job, users=users, body=body, undo=undo)

    def _take_back(self, tx: Tx, results: Sequence[AppendResult]) -> None:
        """Remove exactly the messages a refused change added (their own GUIDs, which no
        other message shares), so the compensation can never erase anything else."""
        for r in results:
            row = tx.conn.execute("SELECT guid FROM messages WHERE mailbox_id = ? AND uid = ?",
                                  (r.mailbox_id, r.uid)).fetchone()
            if row is not None and row[0] == r.guid:
                self._delete_rows(tx, r.mailbox_id, [r.uid])

    async def messages(self, user: str, mailbox_id: int) -> list[MessageMeta]:
        def read(conn: sqlite3.Connection) -> list[MessageMeta]:
            board = conn.execute("SELECT owner FROM mailboxes WHERE id = ?",
                                 (mailbox_id,)).fetchone()
            if board is None:
                raise MailboxNotFound("the mailbox no longer exists")
            private: dict[int, set[str]] = {}
            if board[0] == BOARD_OWNER:
                for uid, flag in conn.execute(
                        "SELECT uid, flag FROM board_private WHERE user = ? AND mailbox_id = ?",
                        (user.lower(), mailbox_id)):
                    private.setdefault(uid, set()).add(flag)
            out = []
            for uid, guid, flags, modseq, size, internaldate in conn.execute(
                "SELECT uid, guid, flags, modseq, size, internaldate FROM messages "
                "WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,)
            ):
                flag_set = _flags_set(flags) | private.get(uid, set())
                out.append(MessageMeta(uid, guid, flag_set, modseq, size,
                                       datetime.fromisoformat(internaldate)))
            return out

        return await self._read(read)

    async def body(self, mailbox_id: int, uid: int) -> bytes:
        def read(conn: sqlite3.Connection) -> bytes:
            row = conn.execute(
                "SELECT b.data FROM messages m JOIN bodies b ON b.hash = m.body_hash "
                "WHERE m.mailbox_id = ? AND m.uid = ?", (mailbox_id, uid)
            ).fetchone()
            if row is None:
                raise MailboxNotFound(f"message {uid} no longer exists", code="EXPUNGEISSUED")
            return bytes(row[0])

        return await self._read(read)

    # search -----------------------------------------------------------------------------

    @staticmethod
    def index_body(conn: sqlite3.Connection, body_hash: str, body: bytes,
                   index: IndexEntry | None = None) -> None:
        """Cache a new body's SEARCH fields and text (once per distinct body). Every path
        that stores a body calls this in the same transaction: local delivery and APPEND
        (with `index` computed off the writer thread) and the replica apply path."""
        if conn.execute("SELECT 1 FROM body_index WHERE hash = ?", (body_hash,)).fetchone():
            return
        entry = index or _index_of(body)
        h = entry.headers
        row_id = conn.execute(
            "INSERT INTO body_index (hash, subject, from_, to_, cc, bcc, message_id, from_addr, "
            "to_addr, cc_addr, bcc_addr, sent, partial) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?) RETURNING id",
            (body_hash, h["subject"], h["from"], h["to"], h["cc"], h["bcc"], h["message-id"],
             h["@from"], h["@to"], h["@cc"], h["@bcc"], entry.sent,
             int(entry.partial))).fetchone()[0]
        conn.execute("INSERT INTO body_fts (rowid, header, body) VALUES (?, ?, ?)",
                     (row_id, entry.header_text, entry.body_text))

    async def search(self, user: str, mailbox_id: int, key: SearchKey,
                     largest_uid: int) -> list[tuple[int, int, bool]]:
        """(uid, modseq, to confirm) of the messages a SEARCH program may match: exact rows
        need no further look; the caller runs the matcher on the others (search_sql.py)."""
        def read(conn: sqlite3.Connection) -> list[tuple[int, int, bool]]:
            owner = conn.execute("SELECT owner FROM mailboxes WHERE id = ?",
                                 (mailbox_id,)).fetchone()
            if owner is None:
                raise MailboxNotFound("the mailbox no longer exists")
            cond = compile_key(key, user.lower() if owner[0] == BOARD_OWNER else None,
                               largest_uid)
            if not cond.uses_index:
                return [(uid, modseq, not cond.exact) for uid, modseq in conn.execute(
                    f"SELECT m.uid, m.modseq FROM messages m WHERE m.mailbox_id = ? AND "
                    f"{cond.sql} ORDER BY m.uid", (mailbox_id, *cond.params))]
            # Bodies not (yet) indexed are candidates whatever the program says.
            return [(uid, modseq, not cond.exact or indexed is None) for uid, modseq, indexed
                    in conn.execute(
                        "SELECT m.uid, m.modseq, bi.id FROM messages m LEFT JOIN body_index bi "
                        f"ON bi.hash = m.body_hash WHERE m.mailbox_id = ? AND (bi.id IS NULL OR "
                        f"{cond.sql}) ORDER BY m.uid", (mailbox_id, *cond.params))]

        return await self._read(read)

    # views: what a selected session reads, each in a constant number of statements --------

    async def uid_tops(self) -> dict[tuple[int, int], int]:
        """(mailbox id, UIDVALIDITY) → the highest UID given out, for every mailbox."""
        rows = await self._read(lambda c: c.execute(
            "SELECT id, uidvalidity, uidnext - 1 FROM mailboxes").fetchall())
        return {(int(i), int(v)): int(top) for i, v, top in rows}

    async def select_state(self, user: str, name: str) -> SelectState:
        """Everything SELECT answers, from summaries, plus the mailbox's UIDs in one query.
        When the UIDs kept from the last SELECT are current (nobody changed the mailbox
        since), the few statements by key and the copy run on the event loop: the hand-off
        to a worker thread and back cost more than the rest of a 100k-message SELECT."""
        def read(conn: sqlite3.Connection, inline: bool = False) -> SelectState | None:
            row = self._mailbox_row(conn, user, name)
            info = self._info(conn, user, row)
            mailbox_id = info.id
            if info.is_board:
                first = conn.execute(
                    "SELECT min(m.uid) FROM messages m WHERE m.mailbox_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM board_seen b WHERE b.user = ? AND b.mailbox_id = ? "
                    "AND b.uid = m.uid)", (mailbox_id, user.lower(), mailbox_id)).fetchone()[0]
            else:
                first = conn.execute(
                    # the partial index holds only unseen messages: its first entry is the
                    # answer (messages_flags would be walked from the oldest message on)
                    "SELECT min(uid) FROM messages INDEXED BY messages_unseen "
                    "WHERE mailbox_id = ? AND "
                    "instr(' ' || flags || ' ', ' \\Seen ') = 0", (mailbox_id,)).fetchone()[0]
            keywords = tuple(r[0] for r in conn.execute(
                "SELECT keyword FROM mailbox_keywords WHERE mailbox_id = ?", (mailbox_id,)))
            if inline:
                kept = self._uid_cache.current(mailbox_id, info.uidvalidity,
                                               info.highestmodseq, INLINE_SELECT_UIDS)
                if kept is None:
                    return None
                return SelectState(info, kept, first, keywords, shared=True)
            uids = self._uid_cache.uids(conn, mailbox_id, info.uidvalidity, info.highestmodseq)
            return SelectState(info, uids, first, keywords)

        kept = self._read_inline(lambda conn: read(conn, inline=True), statements=6)
        if kept is not None:
            return kept
        state = await self._read(read)
        assert state is not None  # a worker-thread read always answers
        return state

    async def changes_since_modseq(self, user: str, mailbox_id: int, modseq: int) -> ViewChanges:
        """What changed in a mailbox after `modseq`: flag/new rows and expunged UIDs. A few
        changes (what a session catches up on between two commands) are read on the event
        loop; more go to a worker thread."""
        def read(conn: sqlite3.Connection, limit: int = -1) -> ViewChanges | None:
            # the pruning horizon of the expunge history (history.py) in the same statement:
            # a catch-up between two commands stays at one statement per table it reads
            row = conn.execute(
                "SELECT owner, highestmodseq, uidnext, (SELECT modseq FROM expunged_horizon h "
                "WHERE h.mailbox_id = mailboxes.id) FROM mailboxes WHERE id = ?",
                (mailbox_id,)).fetchone()
            if row is None:
                raise MailboxNotFound("the mailbox no longer exists")
            if row[1] <= modseq:
                return ViewChanges(row[1], (), ())
            more = limit + 1 if limit >= 0 else -1
            changed = tuple(
                (uid, _flags_set(flags) | _flags_set(seen or ""), m)
                for uid, flags, m, seen in conn.execute(
                    # the LIMIT inside, on the (mailbox_id, modseq) index, before the sort:
                    # a short read stops after limit + 1 rows however many changed
                    f"SELECT * FROM (SELECT m.uid, m.flags, m.modseq, {_board_seen(row[0])} "
                    "FROM messages m INDEXED BY messages_modseq "
                    "WHERE m.mailbox_id = ? AND m.modseq > ? LIMIT ?) "
                    "ORDER BY 1", (user.lower(), mailbox_id, modseq, more)))
            if limit >= 0 and len(changed) > limit:
                return None
            if modseq < (row[3] or 0):
                # The history of expunges was pruned past this MODSEQ (history.py).
                if limit >= 0:
                    return None
                return ViewChanges(row[1], changed,
                                   history.vanished_since_horizon(conn, mailbox_id, row[2]))
            gone = tuple(r[0] for r in conn.execute(
                "SELECT * FROM (SELECT uid FROM expunged INDEXED BY expunged_modseq "
                "WHERE mailbox_id = ? AND modseq > ? "
                "LIMIT ?) ORDER BY 1", (mailbox_id, modseq, more)))
            if limit >= 0 and len(gone) > limit:
                return None
            return ViewChanges(row[1], changed, gone)

        few = self._read_inline(lambda conn: read(conn, INLINE_ROWS), statements=3)
        if few is not None:
            return few
        changes = await self._read(read)
        assert changes is not None  # without a limit there is always an answer
        return changes

    async def fetch_rows(self, user: str, mailbox_id: int, uids: Sequence[int],
                         with_body: bool = False) -> list[tuple[MessageMeta, bytes | None]]:
        """The rows of ascending `uids` (missing ones left out), read in one query."""
        if not uids:
            return []

        def read(conn: sqlite3.Connection) -> list[tuple[MessageMeta, bytes | None]]:
            owner = conn.execute("SELECT owner FROM mailboxes WHERE id = ?",
                                 (mailbox_id,)).fetchone()
            if owner is None:
                raise MailboxNotFound("the mailbox no longer exists")
            body = "(SELECT data FROM bodies WHERE hash = m.body_hash)" if with_body else "NULL"
            columns = (f"SELECT m.uid, m.guid, m.flags, m.modseq, m.size, m.internaldate, "
                       f"{_board_seen(owner[0])}, {body} FROM messages m")
            out = []
            for uid, guid, flags, modseq, size, date, seen, data in _rows_of(
                conn, columns, (user.lower(),), mailbox_id, uids,
            ):
                flag_set = _flags_set(flags) | _flags_set(seen or "")
                meta = MessageMeta(uid, guid, flag_set, modseq, size,
                                   datetime.fromisoformat(date))
                out.append((meta, bytes(data) if data is not None else None))
            return out

        if not with_body and len(uids) <= INLINE_ROWS:
            return self._read_inline(read, statements=2)
        return await self._read(read)

    async def flag_rows(self, user: str, mailbox_id: int,
                        uids: Sequence[int]) -> list[tuple[int, str, int]]:
        """(uid, flags as sorted space-separated text, modseq) of ascending `uids`, in one
        query: what FETCH (FLAGS) needs, without building a MessageMeta per message."""
        if not uids:
            return []
        if len(uids) <= INLINE_ROWS:
            return self._read_inline(lambda conn: self._few_flag_rows(conn, user, mailbox_id,
                                                                      uids))

        def read(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
            owner = conn.execute("SELECT owner FROM mailboxes WHERE id = ?",
                                 (mailbox_id,)).fetchone()
            if owner is None:
                raise MailboxNotFound("the mailbox no longer exists")
            rows = _rows_of(conn, f"SELECT m.uid, m.flags, m.modseq, {_board_seen(owner[0])} "
                            "FROM messages m", (user.lower(),), mailbox_id, uids)
            if owner[0] != BOARD_OWNER:
                return [(uid, flags, modseq) for uid, flags, modseq, _ in rows]
            return [(uid, _flags_text(_flags_set(flags) | _flags_set(seen)) if seen else flags,
                     modseq)
                    for uid, flags, modseq, seen in rows]

        return await self._read(read)

    @staticmethod
    def _few_flag_rows(conn: sqlite3.Connection, user: str, mailbox_id: int,
                       uids: Sequence[int]) -> list[tuple[int, str, int]]:
        """`flag_rows` for a few UIDs in one statement (the owner joined in, a board's
        per-reader flags looked up only on a board): a deleted mailbox has no rows."""
        rows = conn.execute(
            "SELECT m.uid, m.flags, m.modseq, CASE WHEN b.owner = ? THEN (SELECT "
            "group_concat(p.flag, ' ') FROM board_private p WHERE p.user = ? AND "
            "p.mailbox_id = m.mailbox_id AND p.uid = m.uid) END "
            # INDEXED BY: the planner prefers the unique (mailbox_id, uid) index for an IN
            # list, which then reads the table row too (schema.py, messages_flags)
            "FROM messages m INDEXED BY messages_flags JOIN mailboxes b ON b.id = m.mailbox_id "
            f"WHERE m.mailbox_id = ? AND m.uid IN ({','.join('?' * len(uids))}) ORDER BY m.uid",
            (BOARD_OWNER, user.lower(), mailbox_id, *uids))
        return [(uid, _flags_text(_flags_set(flags) | _flags_set(mine)) if mine else flags,
                 modseq) for uid, flags, modseq, mine in rows]

    async def flag_lines(self, mailbox_id: int, uids: Sequence[int], first_seq: int,
                         fields: tuple[str, ...],
                         recent: frozenset[int] = frozenset()) -> bytes | None:
        """FETCH response lines for `uids` (ascending, numbered from `first_seq` on, without
        gaps: a stretch of the view), from one statement over the covering index. The fields
        after "seq" are "uid", "flags", "modseq" in response order. None when the mailbox does
        not hold exactly those UIDs (an expunge or a renumbering not yet in the view) or is a
        board: the caller then renders row by row. `recent`: the UIDs among `uids` whose
        FLAGS also carry \\Recent (the session's own, which SQLite knows nothing of).

        SQLite hands back each column as one joined string and Python splits and formats
        them (C loops on both sides): building every line in SQL (a window function and
        string concatenation per row) cost twice as much at 100k messages."""
        if not uids:
            return b""
        wanted = fields[1:]
        line = "* %d FETCH (" + " ".join(_LINE_ITEMS[f] for f in wanted) + ")\r\n"
        modseqs = "group_concat(modseq)" if "modseq" in wanted else "NULL"
        sql = (
            f"SELECT group_concat(uid), group_concat(flags, char(10)), {modseqs}, count(*) "
            "FROM (SELECT m.uid AS uid, m.flags AS flags, m.modseq AS modseq "
            "FROM messages m INDEXED BY messages_flags, mailboxes b "
            "WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ? AND b.id = m.mailbox_id "
            "AND b.owner <> ? ORDER BY m.uid)")

        def read(conn: sqlite3.Connection) -> bytes | None:
            got, flags, modseq, count = conn.execute(
                sql, (mailbox_id, uids[0], uids[-1], BOARD_OWNER)).fetchone()
            if count != len(uids) or got != ",".join(map(str, uids)):
                return None
            # flags are atoms: never a line break, so char(10) separates them safely
            columns: dict[str, Callable[[], list[str]]] = {
                "uid": lambda: got.split(","), "flags": lambda: _with_recent(
                got, flags.split("\n"), recent), "modseq": lambda: modseq.split(",")}
            made = line.__mod__
            return "".join(map(made, zip(range(first_seq, first_seq + count),
                                         *(columns[f]() for f in wanted), strict=True))).encode()

        return await self._read(read)

    async def uids_with_flag(self, user: str, mailbox_id: int, flag: str) -> list[int]:
        """UIDs carrying a shared flag (EXPUNGE and CLOSE look for \\Deleted)."""
        return await self._read(lambda c: [r[0] for r in c.execute(
            "SELECT uid FROM messages WHERE mailbox_id = ? AND "
            "instr(' ' || flags || ' ', ?) > 0 ORDER BY uid", (mailbox_id, f" {flag} "))])

    async def store_flags(
        self, user: str, mailbox_id: int, uids: Sequence[int], mode: str, flags: Sequence[str],
        unchanged_since: int | None = None, source: object = None,
    ) -> StoreResult:
        wanted = frozenset(flags) - {RECENT}
        if mode not in ("replace", "add", "remove"):
            raise ValueError(f"unknown STORE mode {mode!r}")
        key = replay.current(user)
        before: dict[int, frozenset[str]] = {}

        def job(tx: Tx) -> StoreResult:
            replay.check(tx, key)
            conn = tx.conn
            row = conn.execute("SELECT owner, name FROM mailboxes WHERE id = ?",
                               (mailbox_id,)).fetchone()
            if row is None:
                raise MailboxNotFound("the mailbox no longer exists")
            owner_name = (str(row[0]), str(row[1]))
            is_board = owner_name[0] == BOARD_OWNER
            changed: list[FlagChange] = []
            failed: list[int] = []
            modseq: int | None = None
            moderator = is_board and boardflags.is_moderator(conn, owner_name[1], user.lower())
            for uid, flags, row_modseq, guid, seen in list(_rows_of(
                conn, f"SELECT m.uid, m.flags, m.modseq, m.guid, {_board_seen(owner_name[0])} "
                "FROM messages m", (user.lower(),), mailbox_id, sorted(set(uids)),
            )):
                row = (flags, row_modseq, guid)
                if unchanged_since is not None and row[1] > unchanged_since:
                    failed.append(uid)
                    continue
                shared = _flags_set(row[0])
                private = _flags_set(seen or "")
                old = shared | private
                if is_board:
                    shared, private = boardflags.board_store(mode, shared, private, wanted,
                                                             moderator)
                    new = shared | private
                else:
                    new = boardflags.apply_store(mode, old, wanted)
                    shared = new
                if new == old:
                    continue
                check_keywords(new)
                if modseq is None:
                    modseq = self.clock.now()
                    conn.execute("UPDATE mailboxes SET highestmodseq = max(highestmodseq, ?) "
                                 "WHERE id = ?", (modseq, mailbox_id))
                conn.execute(
                    "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                    (_flags_text(set(shared)), modseq, mailbox_id, uid),
                )
                if is_board:
                    boardflags.set_private(conn, user.lower(), mailbox_id, uid, new - old,
                                           old - new)
                assert modseq is not None
                before[uid] = old
                changed.append(FlagChange(uid, frozenset(new), modseq))
                self._log(tx, "message.flags", {
                    "owner": owner_name[0], "mailbox": owner_name[1], "uid": uid,
                    "guid": row[2], "added": sorted(new - old), "removed": sorted(old - new),
                    "user": user.lower() if is_board else None,
                }, hlc=modseq)
                self._stamp_flags(tx, mailbox_id, row[2], new - old, old - new, modseq,
                                  shared_only=is_board)
            if changed:
                tx.touched.add(mailbox_id)
            self._remember(tx, key, {"failed": failed})
            return StoreResult(tuple(changed), tuple(failed))

        def undo(tx: Tx, result: StoreResult) -> None:
            # Put back what this change altered, where nothing else has changed it since.
            for change in result.changed:
                now = self._current_flags(tx.conn, user, mailbox_id, change.uid)
                if now == change.flags:
                    self._set_flags(tx, user, mailbox_id, change.uid, before[change.uid])
            self._forget(tx, key)

        return await self._change(job, users=(user,), undo=undo, source=source)

    def _current_flags(self, conn: sqlite3.Connection, user: str, mailbox_id: int,
                       uid: int) -> frozenset[str] | None:
        row = conn.execute("SELECT m.flags, b.owner FROM messages m JOIN mailboxes b "
                           "ON b.id = m.mailbox_id WHERE m.mailbox_id = ? AND m.uid = ?",
                           (mailbox_id, uid)).fetchone()
        if row is None:
            return None
        flags = _flags_set(row[0])
        if row[1] == BOARD_OWNER:
            flags |= boardflags.private_flags(conn, user.lower(), mailbox_id, uid)
        return flags

    def _set_flags(self, tx: Tx, user: str, mailbox_id: int, uid: int,
                   flags: frozenset[str]) -> None:
        """A compensating flag change, logged (and so replicated) like any other."""
        conn = tx.conn
        old = self._current_flags(conn, user, mailbox_id, uid)
        row = conn.execute("SELECT guid FROM messages WHERE mailbox_id = ? AND uid = ?",
                           (mailbox_id, uid)).fetchone()
        if old is None or row is None or old == flags:
            return
        is_board = self._mailbox_key(conn, mailbox_id)[0] == BOARD_OWNER
        modseq = self.clock.now()
        conn.execute("UPDATE mailboxes SET highestmodseq = max(highestmodseq, ?) WHERE id = ?",
                     (modseq, mailbox_id))
        shared = flags
        if is_board:  # only SHARED flags live in the post; the rest are this reader's own
            before = conn.execute("SELECT flags FROM messages WHERE mailbox_id = ? AND uid = ?",
                                  (mailbox_id, uid)).fetchone()
            shared = (_flags_set(before[0]) - boardflags.SHARED) | (flags & boardflags.SHARED)
            boardflags.set_private(conn, user.lower(), mailbox_id, uid,
                                   (flags - shared) - old, (old - flags) - shared)
        conn.execute("UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                     (_flags_text(set(shared)), modseq, mailbox_id, uid))
        owner, name = self._mailbox_key(conn, mailbox_id)
        self._log(tx, "message.flags", {
            "owner": owner, "mailbox": name, "uid": uid, "guid": row[0],
            "added": sorted(flags - old), "removed": sorted(old - flags),
            "user": user.lower() if is_board else None,
        }, hlc=modseq)
        self._stamp_flags(tx, mailbox_id, row[0], flags - old, old - flags, modseq,
                          shared_only=is_board)
        tx.touched.add(mailbox_id)

    async def expunge(self, user: str, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        key = replay.current(user)

        def job(tx: Tx) -> list[int]:
            replay.check(tx, key)
            conn = tx.conn
            row = conn.execute("SELECT owner FROM mailboxes WHERE id = ?",
                               (mailbox_id,)).fetchone()
            if row is None:
                raise MailboxNotFound("the mailbox no longer exists")
            if row[0] == BOARD_OWNER and not boardflags.is_moderator(
                    conn, self._mailbox_key(conn, mailbox_id)[1], user.lower()):
                raise NotPermitted("only the board's moderators may expunge its posts")
            self._remember(tx, key, {})
            return self._delete_rows(tx, mailbox_id, uids)

        # Not undone if the copies fail (the messages are gone here); the precheck refuses
        # beforehand when too few peers are reachable. See docs/consistency.md.
        return await self._change(job, users=(user,))

    def _delete_rows(self, tx: Tx, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        removed = []
        modseq = self.clock.now()  # one MODSEQ for the whole expunge
        hashes = set()
        owner, name = self._mailbox_key(tx.conn, mailbox_id)
        for uid in sorted(set(uids)):
            row = tx.conn.execute(
                "DELETE FROM messages WHERE mailbox_id = ? AND uid = ? RETURNING guid, body_hash",
                (mailbox_id, uid),
            ).fetchone()
            if row is not None:
                removed.append(uid)
                hashes.add(row[1])
                tx.conn.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?, ?)",
                                (owner, name, row[0], modseq))
                self._log(tx, "message.expunge",
                          {"owner": owner, "mailbox": name, "uid": uid, "guid": row[0]},
                          hlc=modseq)
        if removed:
            tx.conn.execute("UPDATE mailboxes SET highestmodseq = max(highestmodseq, ?) "
                            "WHERE id = ?", (modseq, mailbox_id))
            # the `expunged` trigger's HIGHESTMODSEQ + 1 is local: the history holds the
            # change's MODSEQ, which the replicas apply verbatim (apply._message_expunge)
            tx.conn.executemany("UPDATE expunged SET modseq = ? WHERE mailbox_id = ? AND uid = ?",
                                [(modseq, mailbox_id, uid) for uid in removed])
            tx.touched.add(mailbox_id)
            self._collect_bodies(tx, hashes)
        return removed

    @staticmethod
    def _mailbox_key(conn: sqlite3.Connection, mailbox_id: int) -> tuple[str, str]:
        row = conn.execute("SELECT owner, name FROM mailboxes WHERE id = ?",
                           (mailbox_id,)).fetchone()
        return (str(row[0]), str(row[1])) if row else ("", "")

    def _stamp_flags(self, tx: Tx, mailbox_id: int, guid: str, added: frozenset[str],
                     removed: frozenset[str], hlc: int, shared_only: bool = False) -> None:
        """Per-flag last-writer stamps, so that replicas merge concurrent changes per flag;
        the stamp is the change record's HLC (and MODSEQ). On a board only the shared flags
        are the post's (a reader's own are stamped per reader, statesync.py): a reader's
        \\Seen stamped here would reach every reader through the message repair."""
        for flag, present in [(f, 1) for f in added] + [(f, 0) for f in removed]:
            if shared_only and flag not in boardflags.SHARED:
                continue
            tx.conn.execute(
                "INSERT OR REPLACE INTO flag_stamps VALUES (?, ?, ?, ?, ?, ?)",
                (mailbox_id, guid, flag, hlc, self.origin, present),
            )

    def _collect_bodies(self, tx: Tx, hashes: set[str] | None = None) -> None:
        if hashes is not None:
            # Only the bodies of the rows just deleted can have lost their last message: a
            # look-up each, not a scan of every body on the node per EXPUNGE.
            for body_hash in hashes:
                tx.conn.execute(
                    "DELETE FROM bodies WHERE hash = ? AND NOT EXISTS "
                    "(SELECT 1 FROM messages m WHERE m.body_hash = ?)", (body_hash, body_hash))
            return
        tx.conn.execute(
            "DELETE FROM bodies WHERE NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.body_hash = bodies.hash) "
            "AND NOT EXISTS (SELECT 1 FROM outbound_queue o WHERE o.body_hash = bodies.hash)"
        )

    def _copy_rows(self, tx: Tx, user: str, source: int, uids: Sequence[int], dest: int,
                   move: bool) -> CopyResult:
        conn = tx.conn
        dest_row = tuple(conn.execute(f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?",
                                      (dest,)).fetchone())
        source_owner = conn.execute("SELECT owner FROM mailboxes WHERE id = ?",
                                    (source,)).fetchone()[0]
        if move and source_owner == BOARD_OWNER:
            raise NotPermitted("board posts cannot be moved out of the board")
        pairs = []
        added: list[AppendResult] = []
        for uid in sorted(set(uids)):
            row = conn.execute(
                "SELECT guid, body_hash, flags, internaldate FROM messages "
                "WHERE mailbox_id = ? AND uid = ?", (source, uid)).fetchone()
            if row is None:
                continue
            flags = _flags_set(row[2])
            if source_owner == BOARD_OWNER:
                flags |= boardflags.private_flags(conn, user.lower(), source, uid)
            # A copy is a new message (RFC 3501): its own GUID, the same body row.
            result = self._add_message(tx, dest_row, None, row[1], flags,
                                       datetime.fromisoformat(row[3]), _new_guid(), user)
            added.append(result)
            pairs.append((uid, result.uid))
        if move:
            self._delete_rows(tx, source, [p[0] for p in pairs])
        tx.added = added
        return CopyResult(dest_row[3], tuple(pairs))

    async def copy(
        self, user: str, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult:
        key = replay.current(user)
        made: list[AppendResult] = []

        def job(tx: Tx) -> CopyResult:
            replay.check(tx, key)
            dest_row = self._mailbox_row(tx.conn, user, dest)
            result = self._copy_rows(tx, user, mailbox_id, uids, dest_row[0], move=False)
            made[:] = tx.added
            self._remember(tx, key, _copy_answer(result))
            return result

        def undo(tx: Tx, result: CopyResult) -> None:
            self._take_back(tx, made)
            self._forget(tx, key)

        return await self._change(job, users=(user,), undo=undo)

    async def move(
        self, user: str, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult:
        key = replay.current(user)

        def job(tx: Tx) -> CopyResult:
            replay.check(tx, key)
            dest_row = self._mailbox_row(tx.conn, user, dest)
            result = self._copy_rows(tx, user, mailbox_id, uids, dest_row[0], move=True)
            self._remember(tx, key, _copy_answer(result))
            return result

        # Not undone when the copies fail: taking the copies back would lose the messages
        # (their sources are gone). The precheck refuses beforehand instead.
        return await self._change(job, users=(user,))

    # change log -----------------------------------------------------------------------------------

    async def changes_since(
        self, origin: str, seq: int, limit: int = 1000
    ) -> list[ChangeRecord]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT origin, seq, hlc, kind, payload FROM changelog "
                "WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?", (origin, seq, limit)
            ).fetchall()
        )
        return [ChangeRecord(o, s, h, k, json.loads(p)) for o, s, h, k, p in rows]

    # replication ----------------------------------------------------------------------------

    async def positions(self) -> dict[str, int]:
        """The highest sequence held for every origin (this node's own included)."""
        rows = await self._read(
            lambda c: c.execute("SELECT origin, max(seq) FROM changelog GROUP BY origin").fetchall()
        )
        return {str(origin): int(seq) for origin, seq in rows}

    async def changes_after(
        self, known: dict[str, int], limit: int = 1000
    ) -> list[ChangeRecord]:
        """Records of any origin beyond what a peer says it holds: in sequence order per
        origin, and across origins in HLC order. A user's home changes hands only after the
        new home holds the old one's records, so its records come later in HLC; sent in that
        order, a peer that lacked the old home's last records applies them before the new
        home's, and each record's MODSEQ (its HLC) lands above the mailbox's HIGHESTMODSEQ
        there as everywhere (store/apply.py gives a late record a local MODSEQ instead)."""
        def read(conn: sqlite3.Connection) -> list[ChangeRecord]:
            runs: list[list[ChangeRecord]] = []
            origins = [r[0] for r in conn.execute("SELECT DISTINCT origin FROM changelog")]
            for origin in origins:
                rows = conn.execute(
                    "SELECT origin, seq, hlc, kind, payload FROM changelog "
                    "WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (origin, known.get(origin, 0), limit),
                ).fetchall()
                if rows:
                    runs.append([ChangeRecord(o, s, h, k, json.loads(p))
                                 for o, s, h, k, p in rows])
            # heapq.merge takes each run's records in their own (sequence) order. A change's
            # records (one per message, one HLC) are never split between batches: a replica
            # applies them in one transaction, each with the change's MODSEQ (apply.py).
            merged = heapq.merge(*runs, key=lambda r: (r.hlc, r.origin))
            out = list(itertools.islice(merged, limit))
            if out:
                last = out[-1]
                # Read lazily, by primary key: it stops at the first record of another change.
                for o, s, h, k, p in conn.execute(
                        "SELECT origin, seq, hlc, kind, payload FROM changelog "
                        "WHERE origin = ? AND seq > ? ORDER BY seq", (last.origin, last.seq)):
                    if h != last.hlc or s != out[-1].seq + 1:
                        break
                    out.append(ChangeRecord(o, s, h, k, json.loads(p)))
            return out

        return await self._read(read)

    async def bodies_for(self, hashes: Sequence[str]) -> dict[str, bytes]:
        def read(conn: sqlite3.Connection) -> dict[str, bytes]:
            found = {}
            for h in set(hashes):
                row = conn.execute("SELECT data FROM bodies WHERE hash = ?", (h,)).fetchone()
                if row is not None:
                    found[h] = bytes(row[0])
            return found

        return await self._read(read)

    async def apply_remote(
        self, records: Sequence[ChangeRecord], bodies: dict[str, bytes]
    ) -> int:
        from mailmux.backend.store.apply import apply_records

        return await self._write(lambda tx: apply_records(self, tx, list(records), bodies))

    async def local_seq(self) -> int:
        row = await self._read(
            lambda c: c.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        )
        return int(row[0]) if row else 0

    async def set_meta(self, key: str, value: str) -> None:
        def job(tx: Tx) -> None:
            tx.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

        await self._write(job)

    async def meta(self, prefix: str) -> dict[str, str]:
        rows = await self._read(
            lambda c: c.execute("SELECT key, value FROM meta WHERE key LIKE ?",
                                (prefix + "%",)).fetchall()
        )
        return {str(k): str(v) for k, v in rows}
