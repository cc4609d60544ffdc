"""Group commit: one thread owns the write connection and commits many writes at once.

Coroutines hand in jobs (functions of a `Tx`) and await a future. The thread takes every job
waiting, runs each inside its own SAVEPOINT of one `BEGIN IMMEDIATE` transaction (a job that
raises rolls back alone and gets its exception), commits once — with synchronous=FULL that is the
fsync — and only then resolves the futures and tells the change feed which mailboxes changed, and
by whom (a job's `source`: the feed of the session that made it, which need not be woken by its
own change). So when `await writer.run(job)` returns, the write is on disk, and concurrent
deliveries share one fsync instead of paying one each.

Lingering: once a commit is acknowledged, the sessions it answered send their next writes a
moment later, and a writer that starts the next commit at once takes only the stragglers —
batches then alternate between a few and the rest, and each client waits two fsyncs. So when
fewer jobs wait than the last batch held, the writer waits a little for the rest: at most a
quarter of what a commit takes lately (the fsync dominates it) and never above LINGER_MAX. A
lone client's batch is one job, which is always there: it never waits.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# mailbox id -> the sources of the jobs of one commit that touched it (None: not a session's)
Touched = dict[int, set[object]]
Arrived = dict[tuple[int, int], int]
MAX_BATCH = 256
LINGER_MAX = 0.002  # seconds: the most a batch waits for the writes of the last one's clients


@dataclass
class Tx:
    """What a job sees: the connection, and a place to say which mailboxes it touched."""

    conn: sqlite3.Connection
    touched: set[int] = field(default_factory=set)
    logged: int = 0  # the last local change-log sequence this job wrote
    bodies: dict[str, bytes] = field(default_factory=dict)  # bodies shipped with remote changes
    indexes: dict[str, Any] = field(default_factory=dict)  # their SEARCH index entries, by hash
    added: list[Any] = field(default_factory=list)  # messages a copy made (undone if refused)
    adds: list[list[Any]] = field(default_factory=list)  # [hlc, payload] of message.add logged
    # (mailbox id, UIDVALIDITY) → highest UID of messages that came from peers (`Arrived`)
    arrived: Arrived = field(default_factory=dict)


@dataclass
class _Job:
    fn: Callable[[Tx], Any]
    future: asyncio.Future[Any]
    source: object = None


_STOP = object()


class Writer:
    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop,
                 notify: Callable[[Touched, Arrived], None]) -> None:
        self._conn = conn
        self._loop = loop
        self._notify = notify
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mailmux-writer", daemon=True)
        self.commits = 0
        self.jobs = 0
        self._commit_time = 0.0  # a moving average of how long a commit takes (seconds)
        self._thread.start()

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    async def run(self, fn: Callable[[Tx], T], source: object = None) -> T:
        return await self.submit(fn, source)

    def submit(self, fn: Callable[[Tx], T], source: object = None) -> asyncio.Future[T]:
        """Queue a job now (jobs commit in the order submitted) and return its future."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(fn, future, source))
        return future

    async def close(self) -> None:
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        stopping = False
        expected = 1  # the size of the last batch: the clients that may write again soon
        while not stopping:
            batch: list[_Job] = []
            item = self._queue.get()
            deadline: float | None = None
            while True:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Job)
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                    continue
                except queue.Empty:
                    if len(batch) >= expected:
                        break
                if deadline is None:
                    deadline = time.monotonic() + min(LINGER_MAX, self._commit_time / 4)
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if batch:
                began = time.monotonic()
                self._commit(batch)
                self._commit_time += (time.monotonic() - began - self._commit_time) / 8
                expected = len(batch)
        self._conn.close()

    def _commit(self, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        touched: Touched = {}
        arrived: Arrived = {}
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                tx = Tx(conn)
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(tx)
                except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
                    continue
                conn.execute("RELEASE job")
                for mailbox_id in tx.touched:
                    touched.setdefault(mailbox_id, set()).add(job.source)
                for key, uid in tx.arrived.items():
                    arrived[key] = max(uid, arrived.get(key, 0))
                results.append((job, value, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("store: commit of %d write(s) failed: %s", len(batch), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(job, None, exc) for job in batch]
            touched, arrived = {}, {}
        self.commits += 1
        self.jobs += len(batch)
        self._loop.call_soon_threadsafe(self._deliver, results, touched, arrived)

    def _deliver(self, results: list[tuple[_Job, Any, BaseException | None]],
                 touched: Touched, arrived: Arrived) -> None:
        for job, value, error in results:
            if job.future.done():
                continue  # the awaiting coroutine was cancelled; the write still happened
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(value)
        self._notify(touched, arrived)
