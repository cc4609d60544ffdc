"""Hot IMAP paths run a constant number of SQL statements, whatever the mailbox's size.

A real store file and a real IMAP server on 127.0.0.1:0 in this process (so the test can count
the statements every store connection runs), driven by a raw client over a real socket. Each
command runs against a 100-message and a 2000-message INBOX; the counts must be equal. A
regression to a per-message query or a full rescan (the old `View.refresh`) fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from mailmux.backend.config import from_dict
from mailmux.backend.imap.server import ImapServer
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.sqlite import SqliteStore

pytestmark = pytest.mark.timeout(300)

USER, PASSWORD = "alice@example.test", "alice-pw"
T = TypeVar("T")


@dataclass
class Counter:
    statements: list[str] = field(default_factory=list)
    kilosteps: int = 0  # hundreds of SQLite VM instructions: the work behind the statements

    def __call__(self, sql: str) -> None:
        self.statements.append(sql)

    def step(self) -> int:
        self.kilosteps += 1
        return 0  # carry on


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.n = 0

    async def command(self, text: str) -> list[bytes]:
        self.n += 1
        tag = f"t{self.n}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        lines = []
        async with asyncio.timeout(60):
            while True:
                line = await self.reader.readline()
                assert line, "server closed the connection"
                lines.append(line)
                if line.startswith(tag + b" "):
                    assert line.startswith(tag + b" OK"), line
                    return lines


@dataclass
class Rig:
    store: SqliteStore
    server: ImapServer
    counter: Counter
    work: dict[str, int] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        reader, writer = await asyncio.open_connection(*self.server.address)
        await reader.readline()
        client = Client(reader, writer)
        await client.command(f'LOGIN "{USER}" "{PASSWORD}"')
        try:
            yield client
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def count(self, client: Client, command: str, label: str = "") -> tuple[int, list[bytes]]:
        self.counter.statements.clear()
        self.counter.kilosteps = 0
        lines = await client.command(command)
        self.work[label or command] = self.counter.kilosteps
        return len(self.counter.statements), lines


def _message(i: int) -> bytes:
    return (f"From: sender{i}@example.org\r\nTo: {USER}\r\nSubject: message {i}\r\n\r\n"
            f"body of message {i}\r\n").encode()


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, messages: int) -> AsyncIterator[Rig]:
    config = from_dict({
        "node_id": "q", "data_dir": str(tmp_path), "domains": ["example.test"],
        "pool_secret": "query-count-secret", "listen_imap": "127.0.0.1:0",
        "listen_smtp": "127.0.0.1:0", "listen_control": "127.0.0.1:0",
    }, tmp_path)
    async with SqliteStore.open(config.db_path, "q", config.domains) as store:
        await store.add_user(USER, PASSWORD)
        server = ImapServer(config, store, LoadMeter())
        address = (await server.start())[0]
        # Mail that arrives while the server runs: what a node held when it started counts
        # as seen (`imap/recent.py`), and these tests want a session to own its \\Recent.
        for start in range(0, messages, 250):  # concurrent appends share group commits
            await asyncio.gather(*(store.append(USER, "INBOX", _message(i), flags=(
                ["\\Seen"] if i % 3 else [])) for i in range(start, min(messages, start + 250))))
        server.address = address  # type: ignore[attr-defined]
        counter = Counter()
        store.trace(counter, counter.step)
        try:
            yield Rig(store, server, counter)
        finally:
            store.trace(None)
            await server.close()


async def _counts(tmp_path: Path, messages: int) -> tuple[dict[str, int], dict[str, int]]:
    out: dict[str, int] = {}
    async with rig(tmp_path, messages) as r, r.client() as a, r.client() as b:
        out["SELECT"], lines = await r.count(a, "SELECT INBOX")
        assert f"* {messages} EXISTS\r\n".encode() in lines
        out["FETCH 1:* (FLAGS)"], lines = await r.count(a, "FETCH 1:* (FLAGS)")
        assert len([x for x in lines if x.startswith(b"* ")]) == messages
        out["UID FETCH 1:* (UID FLAGS)"], _ = await r.count(a, "UID FETCH 1:* (UID FLAGS)")
        out["UID FETCH n (FLAGS)"], lines = await r.count(a, "UID FETCH 50 (FLAGS)")
        assert lines[0].startswith(b"* 50 FETCH (UID 50 FLAGS (")
        out["UID FETCH n BODY.PEEK[]"], _ = await r.count(a, "UID FETCH 50 BODY.PEEK[]")
        await r.count(b, "SELECT INBOX")
        out["UID STORE n +FLAGS"], lines = await r.count(a, "UID STORE 7 +FLAGS (\\Flagged)")
        assert b"\\Flagged" in lines[0]
        # The other session catches up on the change: one small read, not a rescan.
        out["NOOP after another session's STORE"], lines = await r.count(b, "NOOP", "catch-up")
        assert lines[0].startswith(b"* 7 FETCH (FLAGS (") and b"\\Flagged" in lines[0]
        out["NOOP, nothing new"], _ = await r.count(b, "NOOP")
        out["STATUS"], _ = await r.count(b, "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)")
    return out, r.work


# Commands that name one message or catch up on one change: their SQLite work must not grow
# with the mailbox (SELECT and FETCH 1:* read every UID/row once, so theirs does, linearly).
CONSTANT_WORK = ("UID FETCH 50 (FLAGS)", "UID FETCH 50 BODY.PEEK[]",
                 "UID STORE 7 +FLAGS (\\Flagged)", "NOOP", "catch-up",
                 "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)")


async def test_hot_paths_cost_the_same_statements_at_100_and_2000_messages(
    tmp_path: Path,
) -> None:
    small, small_work = await _counts(tmp_path / "small", 100)
    large, large_work = await _counts(tmp_path / "large", 2000)
    assert small == large, f"statement counts grow with the mailbox: {small} vs {large}"
    assert all(n <= 30 for n in small.values()), small
    for command in CONSTANT_WORK:
        # x20 the messages; allow a B-tree level or two of difference, not a scan.
        assert large_work[command] <= small_work[command] + 20, (
            command, small_work[command], large_work[command])
    assert large_work["SELECT INBOX"] <= 40 * max(1, small_work["SELECT INBOX"])


async def test_one_message_commands_make_no_thread_hop_and_one_statement(tmp_path: Path) -> None:
    """A command that names a message or two (and a session catching up on a few changes)
    reads on the event loop in one or two statements: the hand-off to a worker thread and back
    cost more than the read (UID FETCH n was 5-13x Dovecot for that)."""
    hops: list[str] = []
    async with rig(tmp_path, 300) as r, r.client() as a, r.client() as b:
        read = r.store._read

        async def counted(fn: Callable[[sqlite3.Connection], T]) -> T:
            hops.append(getattr(fn, "__qualname__", "?"))
            return await read(fn)

        r.store._read = counted  # type: ignore[method-assign]
        await a.command("SELECT INBOX")
        await b.command("SELECT INBOX")
        hops.clear()
        statements, lines = await r.count(a, "UID FETCH 77 (FLAGS)")
        assert lines[0].startswith(b"* 77 FETCH (UID 77 FLAGS (")
        assert statements == 1
        _, lines = await r.count(a, "FETCH 5,9 (UID FLAGS)")
        assert [x[:10] for x in lines[:2]] == [b"* 5 FETCH ", b"* 9 FETCH "]
        await a.command("UID STORE 7 +FLAGS (\\Flagged)")
        statements, lines = await r.count(b, "NOOP")  # catches up on a's change
        assert lines[0].startswith(b"* 7 FETCH (FLAGS (") and statements <= 5
        await b.command("UID STORE 8 -FLAGS.SILENT (\\Seen)")
        assert hops == [], f"worker-thread reads: {hops}"
        # A range beyond the inline bound still goes to a worker thread.
        await a.command("FETCH 1:100 (FLAGS)")
        assert hops, "a 100-message FETCH ran on the event loop"


def _message_lookups(db: Path, statements: list[str]) -> list[str]:
    """The query-plan lines of `statements` that read the messages table (SEARCH or SCAN)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [f"{sql[:60]}...: {row[3]}" for sql in statements
                for row in conn.execute("EXPLAIN QUERY PLAN " + sql)
                if row[3].split(" ")[:2] in (["SEARCH", "m"], ["SEARCH", "messages"],
                                             ["SCAN", "m"], ["SCAN", "messages"])]
    finally:
        conn.close()


async def test_one_message_flag_reads_are_one_narrow_index_seek_at_any_size(
    tmp_path: Path,
) -> None:
    """`UID FETCH n (FLAGS)` at 100 and 2000 messages runs the same statements, and each reads
    a message in one descent of a covering index. The VM-step count above cannot see the rest:
    a seek in the (mailbox_id, uid) index followed by a second one into the wide table row
    costs the same steps at any size, but at 100k messages that second descent missed the page
    cache on almost every random UID and was the part of the command that grew."""
    plans: dict[int, list[str]] = {}
    for size in (100, 2000):
        async with rig(tmp_path / str(size), size) as r, r.client() as a:
            await a.command("SELECT INBOX")
            seen: list[str] = []
            for command in ("UID FETCH 50 (FLAGS)", "FETCH 5,9 (UID FLAGS)",
                            "UID FETCH 60 (UID FLAGS MODSEQ)"):
                _, lines = await r.count(a, command)
                assert lines[0].startswith(b"* "), lines
                seen += r.counter.statements
            plans[size] = _message_lookups(r.store.db_path, seen)
    assert plans[100] == plans[2000]
    assert plans[100], "no statement read the messages table"
    slow = [p for p in plans[100] if "COVERING INDEX" not in p and "PRIMARY KEY" not in p]
    assert not slow, f"a message read needs a second B-tree (or a scan): {slow}"


async def test_bulk_flag_lines_are_byte_for_byte_the_row_by_row_ones(tmp_path: Path) -> None:
    """A FETCH of FLAGS/UID/MODSEQ over a long gapless stretch gets its lines from one
    statement (`flag_lines`); a few messages at a time are rendered row by row. Both must
    send the same bytes, for every order of the items, in the session that holds \\Recent
    for every message (the first after a restart) and in one that holds it for none."""
    async with rig(tmp_path, 300) as r, r.client() as a, r.client() as b:
        await a.command("SELECT INBOX")  # takes \Recent for all 300
        await b.command("SELECT INBOX")
        await b.command("STORE 7 +FLAGS.SILENT (\\Flagged $Label1)")
        for client in (a, b):
            await client.command("NOOP")
            for items, uid in (("(FLAGS)", ""), ("(UID FLAGS)", ""), ("(FLAGS MODSEQ)", "UID "),
                               ("(MODSEQ FLAGS UID)", "")):
                bulk = await client.command(f"{uid}FETCH 1:300 {items}")
                rows: list[bytes] = []
                for start in range(1, 301, 30):  # 30 a time: under the inline bound
                    rows += await client.command(f"{uid}FETCH {start}:{start + 29} {items}")
                fetched = [x for x in bulk if b" FETCH (" in x]
                assert fetched == [x for x in rows if b" FETCH (" in x], items
                assert len(fetched) == 300
                assert (b"\\Recent" in fetched[0]) is (client is a)


async def test_a_small_command_costs_one_parse_one_write_no_timer_and_no_setsockopt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The node's fixed cost per command, counted (never timed): a `UID FETCH n (FLAGS)` or
    NOOP sent whole is parsed once and answered in one socket write, with no TCP_QUICKACK
    (its answer carries the ACK; quickack is for a literal's part that gets no answer) and no
    timer of its own (a per-read `asyncio.timeout` pushed a TimerHandle into the loop's heap
    and left it there cancelled: the session's idle watchdog is pushed forward instead)."""
    from mailmux.backend.imap import session as session_module

    parses: list[bytes] = []
    parse = session_module.parse_command

    def counted_parse(raw: bytes) -> session_module.Command:
        parses.append(raw)
        return parse(raw)

    quickacks: list[object] = []
    monkeypatch.setattr(session_module, "parse_command", counted_parse)
    monkeypatch.setattr(session_module, "quickack", quickacks.append)
    async with rig(tmp_path, 300) as r, r.client() as a:
        port = r.server.address[1]  # type: ignore[attr-defined]
        writes: list[bytes] = []
        transport = a.writer.transport
        server_write = type(transport).write

        def counted_write(self: asyncio.WriteTransport, data: bytes) -> None:
            if self.get_extra_info("sockname")[1] == port:  # the node's end, not the client's
                writes.append(bytes(data))
            server_write(self, data)

        monkeypatch.setattr(type(transport), "write", counted_write)
        loop = asyncio.get_running_loop()
        timers: list[float] = []
        call_at = loop.call_at
        client_task = asyncio.current_task()  # the client's own timeouts are not the node's

        def counted_call_at(when: float, *args: object, **kwargs: object) -> asyncio.TimerHandle:
            if asyncio.current_task() is not client_task:
                timers.append(when)
            return call_at(when, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(loop, "call_at", counted_call_at)
        await a.command("SELECT INBOX")
        for command in ("UID FETCH 77 (FLAGS)", "NOOP", "UID FETCH 78 (FLAGS)", "NOOP"):
            await a.command(command)  # the watchdog is armed by now; timers come per command
        parses.clear()
        writes.clear()
        timers.clear()
        commands = ["UID FETCH 77 (FLAGS)", "NOOP", "UID FETCH 123 (FLAGS)", "NOOP"] * 5
        for command in commands:
            await a.command(command)  # asserts the tagged OK
        assert len(parses) == len(commands)
        assert len(writes) == len(commands), writes[:4]
        assert quickacks == []
        assert timers == [], f"{len(timers)} timers for {len(commands)} commands"
