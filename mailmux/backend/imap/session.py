"""One IMAP connection: the read loop around the sans-IO codec, and one handler per command.

The loop feeds socket bytes to `CommandFramer`, answers "+" for synchronising literals, parses
each whole command and runs its handler. A command only runs once all of its bytes (literals
included) have arrived, so a client that disconnects mid-literal leaves nothing behind. Every
handler returns the response lines; they are written in one batch.

Limits: unauthenticated sessions get small literals and `login_timeout`; authenticated ones get
`idle_timeout` (RFC 3501: at least 30 minutes); failed logins are slowed (doubling delay) and
end the connection after `max_failed_logins`. Passwords never reach the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import dataclasses
import functools
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from mailmux import metrics
from mailmux.backend.config import BackendConfig
from mailmux.backend.errors import BackendError, MailboxNotFound, NoMajority, NotPermitted
from mailmux.backend.imap import catenate, notify
from mailmux.backend.imap import fetch as fetching
from mailmux.backend.imap.budget import Budget, run_bounded
from mailmux.backend.imap.contexts import Contexts, UpdateContext
from mailmux.backend.imap.listing import format_listed, list_responses, listed
from mailmux.backend.imap.notify import Notifier
from mailmux.backend.imap.states import ALLOWED, CAPABILITIES, NO_EXPUNGE_DURING, State
from mailmux.backend.imap.view import View
from mailmux.backend.message.limits import check_keywords, check_structure
from mailmux.backend.message.parsed import ParsedMessage, Part
from mailmux.backend.message.search import SearchContext, matches
from mailmux.backend.message.sort import Candidate, Keyed, order_keyed, sent_time, sort_keys
from mailmux.backend.message.threading import ThreadInput, format_threads, message_ids, thread
from mailmux.backend.store.interface import (
    INLINE_ROWS,
    AppendResult,
    FlagChange,
    MailboxInfo,
    MessageMeta,
    ViewChanges,
)
from mailmux.backend.store.replay import REPLAY, Replayed
from mailmux.inflated import read_inflated
from mailmux.protocol.imap import gatewaylink
from mailmux.protocol.imap.commands import (
    Append,
    Authenticate,
    CancelUpdate,
    Command,
    Compress,
    CopyMove,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    Notify,
    QresyncParams,
    Rename,
    Search,
    SearchKey,
    SeqRange,
    SequenceSet,
    Sort,
    StatusArgs,
    Store,
    Thread,
)
from mailmux.protocol.imap.compress import CompressError, Deflater, Inflater
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.esearch import Result, wanted
from mailmux.protocol.imap.framing import (
    CommandBytes,
    CommandFramer,
    FramingError,
    LiteralContinue,
    NeedData,
)
from mailmux.protocol.imap.mutf7 import encode_mailbox
from mailmux.protocol.imap.parser import parse_command
from mailmux.protocol.imap.replay import split_replay
from mailmux.protocol.imap.response import (
    Atom,
    continuation,
    encode_value,
    format_flags,
    format_sequence_set,
    quote,
    tagged,
    untagged,
    untagged_status,
)
from mailmux.tcp import quickack

if TYPE_CHECKING:
    from mailmux.backend.imap.server import ImapServer

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = tuple[MessageMeta, bytes | None]  # a message and its body, as fetch_rows gives them
AppendedMessage = tuple[tuple[str, ...], datetime | None, bytes, bool]  # flags, date, bytes, ~

READ_SIZE = 64 * 1024
UNAUTHENTICATED_MAX_LITERAL = 4 * 1024
UNAUTHENTICATED_MAX_COMMAND = 8 * 1024  # every line and literal of one command, before login
MAX_LOGIN_DELAY = 30.0
PERMANENT_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*")
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
FETCH_CHUNK = 5000  # messages whose metadata one FETCH reads per query
FETCH_BODY_CHUNK = 64  # messages, and
BODY_BATCH_BYTES = 4 * 1024 * 1024  # bytes of bodies, read per query
MAX_FETCH_BODY_ITEMS = 50  # items of one FETCH that each carry message content
MAX_FETCH_ITEMS = 100
OUTPUT_CHUNK = 64 * 1024  # bytes of responses written (and drained) at a time
SEARCH_CHECK_CHUNK = 256
NOTIFY_FETCH_MAX = 1000  # new messages one NOTIFY wake-up sends MessageNew's items for
_ROW_FIELDS = ("seq", "uid", "flags", "modseq")  # messages a SEARCH reads and checks at a time
_METADATA_CRITERIA = frozenset({"ARRIVAL", "SIZE"})  # SORT keys read from the row alone

Lines = list[bytes]


class Closed(Exception):
    """The client went away or the session must end now."""


class Session:
    def __init__(self, server: ImapServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.config = server.config
        self.store = server.store
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.framer = CommandFramer(self.config.max_line_length, UNAUTHENTICATED_MAX_LITERAL,
                                    UNAUTHENTICATED_MAX_COMMAND)
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.view: View | None = None
        self.feed: asyncio.Queue[int] | None = None
        self.enabled: set[str] = set()
        self.known_flags: set[str] = set()  # flags announced by the last untagged FLAGS
        # Updates the view already took in (EXPUNGE, FETCH, EXISTS...) but not yet sent: a
        # command that fails after taking them in must still send them with its NO, or the
        # client's numbering and the view's part (dispatch).
        self._untold: Lines = []
        self.contexts = Contexts()  # SEARCH/SORT RETURN (UPDATE) of the selected mailbox
        self.failed_logins = 0
        self.gateway: str | None = None  # the gateway key that vouched for this link
        self._preface: list[bytes] = []  # answers owed before the first command is read
        self.tls = False
        self.started = asyncio.get_running_loop().time()
        self.inflater: Inflater | None = None  # COMPRESS=DEFLATE (RFC 4978) is on
        self.deflater: Deflater | None = None
        self.notifier: Notifier | None = None  # NOTIFY SET in force (RFC 5465)
        self.woken = asyncio.Event()  # set by the store after a commit, while NOTIFY is on
        self.idling = False
        self._loop = asyncio.get_running_loop()
        self._watch: asyncio.TimerHandle | None = None  # the read-timeout watchdog
        self._deadline = 0.0  # of the read in progress (loop time)
        self._reading: asyncio.Task[object] | None = None  # the task in _read_in_time
        self._expired: asyncio.Task[object] | None = None  # the reader the watchdog cancelled

    # I/O ------------------------------------------------------------------------------------

    async def send(self, lines: Lines) -> None:
        self._untold = []  # whatever the view took in so far goes out with these
        if lines:
            data = b"".join(lines)
            self.writer.write(self.deflater.compress(data) if self.deflater else data)
            await self.writer.drain()

    async def _recv(self) -> bytes:
        """Socket bytes, decompressed when COMPRESS is on: at most one bounded piece at a
        time (compress.py), so a decompression bomb meets the framer's caps piece by piece.
        Takes nothing from the socket if cancelled while waiting."""
        inflater = self.inflater
        if inflater is None:
            return await self.reader.read(READ_SIZE)
        try:
            return await read_inflated(self.reader, inflater, READ_SIZE)
        except CompressError as exc:
            raise Closed(str(exc)) from None

    def _timeout(self) -> float:
        if self.state is State.NOT_AUTHENTICATED:
            elapsed = asyncio.get_running_loop().time() - self.started
            return max(0.0, self.config.login_timeout - elapsed)
        return self.config.idle_timeout

    async def next_event(self) -> CommandBytes | FramingError:
        incomplete = False
        while True:
            event = self.framer.next_event()
            if isinstance(event, NeedData):
                if incomplete:
                    # A part of a command (a literal without its closing CRLF, say) will get
                    # no answer to carry our ACK: ACK it now. A whole command's answer does.
                    quickack(self.writer)
                try:
                    data = await self._read_in_time()
                except TimeoutError:
                    reason = ("login timeout" if self.state is State.NOT_AUTHENTICATED
                              else "autologout, idle for too long")
                    await self.send([untagged_status("BYE", reason)])
                    raise Closed(reason) from None
                if not data:
                    raise Closed("client closed the connection")
                self.framer.receive_data(data)
                incomplete = True
                if self.inflater is not None and self.inflater.pending:
                    await asyncio.sleep(0)  # a long expansion still lets others run
                continue
            if isinstance(event, LiteralContinue):
                await self.send([continuation("Ready for literal data")])
                continue
            return event

    async def _read_in_time(self) -> bytes:
        """`_read` within the session's timeout (login or idle), else TimeoutError. One watchdog
        timer per session, pushed forward lazily, instead of an `asyncio.timeout` per read:
        that pushed a TimerHandle into the loop's heap per command and left it there cancelled,
        a fixed cost bigger than many a command's own work."""
        loop = self._loop
        task = asyncio.current_task()
        assert task is not None
        deadline = loop.time() + self._timeout()
        self._deadline = deadline
        watch = self._watch
        if watch is None or watch.when() > deadline:  # none yet, or the timeout shrank
            if watch is not None:
                watch.cancel()
            self._watch = loop.call_at(deadline, self._expire)
        cancelling = task.cancelling()
        self._reading = task
        try:
            return await self._read()
        except asyncio.CancelledError:
            if self._expired is task and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._reading = None
            self._expired = None

    def _expire(self) -> None:
        """The watchdog: a read past its deadline is cancelled (as `asyncio.timeout` would);
        otherwise the watchdog waits for the current deadline."""
        self._watch = None
        task = self._reading
        if task is None:
            return  # between reads: the next read arms it again
        if self._loop.time() < self._deadline:
            self._watch = self._loop.call_at(self._deadline, self._expire)
            return
        self._expired = task
        task.cancel()

    def disarm(self) -> None:
        """The session is over: drop its watchdog (it would hold the session until it fired)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _read(self) -> bytes:
        """Client bytes; with NOTIFY on, events that happen meanwhile are sent as they come
        (between commands only: never inside a command the client is still sending)."""
        if self.notifier is None or self.framer.in_command or self.idling:
            return await self._recv()
        read = asyncio.ensure_future(self._recv())
        try:
            while True:
                wake = asyncio.ensure_future(self.woken.wait())
                await asyncio.wait({read, wake}, return_when=asyncio.FIRST_COMPLETED)
                if read.done():
                    wake.cancel()
                    return read.result()
                await self.send(await self._notifications())
        finally:
            if not read.done():
                read.cancel()  # a read waiting for data has taken none: nothing is lost

    def _committed(self) -> None:
        self.woken.set()

    async def _notifications(self) -> Lines:
        """NOTIFY: what changed since the last report, for the selected mailbox (when a
        SELECTED group asks) and for the others the groups name."""
        notifier = self.notifier
        self.woken.clear()
        if notifier is None:
            return []
        lines: Lines = []
        group = notifier.selected_group()
        if self.view is not None and group is not None:
            view = self.view
            last = view.uids[-1] if view.uids else 0
            lines += await self.updates(allow_expunge=group.filter == "SELECTED")
            if group.fetch_attrs and self.view is view:
                new = view.uids[bisect.bisect_right(view.uids, last):]
                lines += await self._fetch_new(list(new[:NOTIFY_FETCH_MAX]), group.fetch_attrs)
        infos = await self.store.list_mailboxes(self.me)
        subscriptions = await self.store.subscriptions(self.me)
        selected = self.view.mailbox_id if self.view is not None else None
        # comparing every mailbox is CPU work proportional to the account: off the event loop
        return lines + await asyncio.to_thread(notifier.changes, infos, subscriptions, selected)

    async def _fetch_new(self, uids: list[int], attrs: tuple[FetchAttr, ...]) -> Lines:
        """NOTIFY's MessageNew (fetch-att): the new messages' items, after their EXISTS."""
        view = self.selected
        lines: Lines = []
        for meta, _ in await self.store.fetch_rows(self.me, view.mailbox_id, uids):
            lines += self._announce_flags(set(meta.flags))
            items = fetching.render(attrs, self._recent(meta), None, with_uid=False,
                                    with_modseq=False)
            lines.append(untagged(view.seq_of(meta.uid), Atom("FETCH"), items))
        return lines

    def _notify_off(self) -> None:
        if self.notifier is not None and self._committed in self.store.commit_hooks:
            self.store.commit_hooks.remove(self._committed)
        self.notifier = None

    # main loop ----------------------------------------------------------------------------

    def linked(self, name: str, proof: gatewaylink.LinkProof | None) -> None:
        """A gateway's link, proven (by the server) before the greeting was sent."""
        self.gateway = name
        if proof is not None:
            self._preface.append(tagged(proof.tag, "OK", "gateway link", "XGATEWAY"))

    def _gateway_link(self, line: bytes) -> Lines | None:
        proof = gatewaylink.parse(line.strip() + b"\r\n")
        if proof is None:
            return None
        name = self.server.gateway_link(self, line.strip() + b"\r\n")
        if name is None:
            return [tagged(proof.tag, "NO", "not a gateway of this pool", "AUTHENTICATIONFAILED")]
        self.gateway = name
        return [tagged(proof.tag, "OK", "gateway link", "XGATEWAY")]

    async def run(self) -> None:
        caps = " ".join(self.capabilities())
        await self.send([untagged_status("OK", "mailmux ready", f"CAPABILITY {caps}"),
                         *self._preface])
        while self.state is not State.LOGOUT:
            event = await self.next_event()
            if isinstance(event, FramingError):
                await self.send([self._framing_reply(event)])
                if event.fatal:
                    raise Closed(event.message)
                continue
            if self.state is State.NOT_AUTHENTICATED and self.gateway is None and (
                    link := self._gateway_link(event.raw)) is not None:
                await self.send(link)
                continue
            try:
                raw, replay_id = split_replay(event.raw)
                command = parse_command(raw)
            except ParseError as exc:
                code = exc.code or "CLIENTBUG" if exc.tag else exc.code
                if exc.tag is None:
                    await self.send([untagged_status("BAD", exc.message, code)])
                else:
                    await self.send([tagged(exc.tag, exc.status, exc.message, code)])
                continue
            await self.send(await self.dispatch(command, replay_id))

    def _framing_reply(self, error: FramingError) -> bytes:
        if error.tag is None:
            return untagged_status("BAD", error.message, error.code)
        status = "NO" if error.code == "TOOBIG" and not error.fatal else "BAD"
        return tagged(error.tag, status, error.message, error.code)

    def capabilities(self) -> list[str]:
        caps = list(CAPABILITIES)
        if self.state is State.NOT_AUTHENTICATED:
            caps.append("AUTH=PLAIN")
            if self.server.tls_context is not None and not self.tls:
                caps.append("STARTTLS")
        return caps

    async def dispatch(self, command: Command, replay_id: str | None = None) -> Lines:
        if replay_id is not None:
            return await self._dispatch_replay(command, replay_id)
        if command.name not in ALLOWED[self.state]:
            if self.state is State.NOT_AUTHENTICATED:
                return [tagged(command.tag, "BAD", "log in first", "CLIENTBUG")]
            if command.name in ("LOGIN", "AUTHENTICATE", "STARTTLS"):
                return [tagged(command.tag, "BAD", "already authenticated", "CLIENTBUG")]
            return [tagged(command.tag, "BAD", f"{command.name} needs a selected mailbox",
                           "CLIENTBUG")]
        handler: Callable[[Command], Awaitable[Lines]] = getattr(self, "do_" + command.name)
        log.debug("imap %s (%s): %s%s", self.peer, self.user, "UID " if command.uid else "",
                  command.name)
        started = time.monotonic()
        self._untold = []
        with self.server.meter.transaction():
            try:
                lines = await handler(command)
                if self.contexts and lines and self.state is State.SELECTED:
                    lines[-1:-1] = await self._context_updates()
            except Replayed:
                raise  # the same replay id raced in: _dispatch_replay answers as the original
            except BackendError as exc:
                lines = [*self._untold, exc.imap_reply(command.tag)]
            except Closed:
                raise
            except (OSError, ValueError, LookupError) as exc:
                log.exception("imap %s (%s): %s failed", self.peer, self.user, command.name)
                lines = [*self._untold, tagged(command.tag, "NO",
                                               f"internal error: {type(exc).__name__}",
                                               "SERVERBUG")]
            finally:
                metrics.observe_command(
                    f"UID {command.name}" if command.uid else command.name,
                    time.monotonic() - started)
        return lines

    async def _dispatch_replay(self, command: Command, replay_id: str) -> Lines:
        """A command the gateway may send again: if this node already holds its effect (made
        here or replicated from where it was made), answer what the original answered."""
        if self.user is None or command.name not in ALLOWED[self.state]:
            return await self.dispatch(command)
        answer = await self.store.replay_answer(self.me, replay_id)
        if answer is not None:
            return await self._replayed(command, answer)
        token = REPLAY.set(replay_id)
        try:
            return await self.dispatch(command)
        except Replayed as exc:  # the same id raced in on another session
            untold = list(self._untold)  # updates the view took in before the refusal
            return [*untold, *await self._replayed(command, exc.answer)]
        finally:
            REPLAY.reset(token)

    async def _replayed_store_flags(self, command: Command, failed: object) -> Lines:
        """A replayed STORE answers with the FETCH responses the original gave: the flags (and,
        with CONDSTORE, MODSEQ) its messages have now. Without them a client whose STORE was
        replayed after a failover keeps the MODSEQ it had before its own change."""
        args = command.args
        view = self.view
        if not isinstance(args, Store) or view is None or (args.silent and not view.condstore):
            return []
        skip = {int(u) for u in failed} if isinstance(failed, list) else set()
        uids = [u for u in view.resolve(args.sequence, command.uid) if u not in skip]
        rows = await self.store.fetch_rows(self.me, view.mailbox_id, uids)
        lines: Lines = self._announce_flags({f for m, _ in rows for f in m.flags})
        for meta, _ in rows:
            view.reported(meta.uid, meta.modseq)
            lines.append(view.flags_response(meta.uid, meta.flags, meta.modseq,
                                             with_uid=command.uid))
        return lines

    async def _replayed(self, command: Command, answer: dict[str, object]) -> Lines:
        name = command.name
        code: str | None = None
        if name == "APPEND":
            code = f"APPENDUID {answer['uidvalidity']} {answer['uid']}"
            return await self.ok(command, "APPEND completed", code)
        if name in ("COPY", "MOVE"):
            pairs = answer.get("pairs")
            if isinstance(pairs, list) and pairs:
                code = (f"COPYUID {answer['uidvalidity']} "
                        f"{format_sequence_set([int(p[0]) for p in pairs])} "
                        f"{format_sequence_set([int(p[1]) for p in pairs])}")
            if name == "COPY":
                return await self.ok(command, "COPY completed", code)
            lines = [untagged_status("OK", "moved", code)] if code else []
            lines += await self._refresh_now() if self.view is not None else []
            return [*lines, tagged(command.tag, "OK", "MOVE completed")]
        if name == "STORE":
            failed = answer.get("failed")
            modified: str | None = None
            if isinstance(failed, list) and failed and self.view is not None:
                view = self.view
                shown = [int(u) for u in failed] if command.uid else [
                    view.seq_of(int(u)) for u in failed if int(u) in view.uids]
                modified = f"MODIFIED {format_sequence_set(shown)}" if shown else None
            report = await self._replayed_store_flags(command, failed)
            return await self.ok(command, "STORE completed", modified, before=report)
        return await self.ok(command, f"{name} completed")

    # pending updates ----------------------------------------------------------------------

    async def updates(self, allow_expunge: bool = True) -> Lines:
        """Untagged responses for what other sessions changed in the selected mailbox."""
        if self.view is None or self.feed is None:
            return []
        drained = False
        while not self.feed.empty():
            self.feed.get_nowait()
            drained = True
        if not drained and not (allow_expunge and self.view.pending_expunge):
            return []
        assert self.user is not None
        try:
            changes = await self.store.changes_since_modseq(self.user, self.view.mailbox_id,
                                                            self.view.modseq)
        except MailboxNotFound:
            self._unselect()
            return [untagged_status("BYE", "the selected mailbox was deleted")]
        return self._applied(changes, allow_expunge)

    def _applied(self, changes: ViewChanges, allow_expunge: bool) -> Lines:
        """The view brought up to date, with FLAGS for new keywords and \\Recent for new mail."""
        view = self.selected
        last = view.uids[-1] if view.uids else 0
        removals: Lines = []
        if self.contexts and allow_expunge:
            # REMOVEFROM numbers messages as the client knows them: before EXPUNGE renumbers
            removals = self.contexts.removed(
                [*view.pending_expunge, *(u for u in changes.expunged if u <= last)], view)
        lines = [*removals, *view.apply(changes, allow_expunge)]
        if view.recent and changes.expunged:
            view.recent.difference_update(changes.expunged)
        new = view.uids[bisect.bisect_right(view.uids, last):]
        if new:
            claims = self.server.recent
            key = (view.mailbox_id, view.uidvalidity)
            view.recent.update(claims.peek(key, new) if view.readonly else claims.claim(key, new))
            lines.append(untagged(len(view.recent), Atom("RECENT")))
        used = {f for _, flags, _ in changes.changed for f in flags}
        told = [*self._announce_flags(used), *lines]
        self._untold.extend(told)
        return told

    def _announce_flags(self, used: set[str]) -> Lines:
        """An untagged FLAGS before the first response that uses a keyword not yet in it."""
        if used <= self.known_flags:
            return []
        self.known_flags |= used
        return [untagged(Atom("FLAGS"), format_flags(sorted(self.known_flags)))]

    async def _condstore_on(self) -> Lines:
        """RFC 7162 3.1: the first CONDSTORE-enabling command reports HIGHESTMODSEQ."""
        view = self.selected
        first = "CONDSTORE" not in self.enabled or not view.condstore
        self.enabled.add("CONDSTORE")
        view.condstore = True
        if not first:
            return []
        info = await self.store.get_mailbox(self.me, view.name)
        return [untagged_status("OK", "highest", f"HIGHESTMODSEQ {info.highestmodseq}")]

    async def ok(self, command: Command, text: str, code: str | None = None,
                 before: Lines | None = None) -> Lines:
        allow = not (command.name in NO_EXPUNGE_DURING and not command.uid)
        return [*(before or []), *await self.updates(allow), tagged(command.tag, "OK", text, code)]

    # any state ----------------------------------------------------------------------------

    async def do_CAPABILITY(self, command: Command) -> Lines:
        return [untagged(Atom("CAPABILITY"), *[Atom(c) for c in self.capabilities()]),
                tagged(command.tag, "OK", "CAPABILITY completed")]

    async def do_NOOP(self, command: Command) -> Lines:
        if self.user is not None:
            await self.store.read_barrier(self.me)  # a sync point: see what others were told
        return await self.ok(command, "NOOP completed")

    async def do_LOGOUT(self, command: Command) -> Lines:
        self.state = State.LOGOUT
        return [untagged_status("BYE", "mailmux logging out"),
                tagged(command.tag, "OK", "LOGOUT completed")]

    async def do_ID(self, command: Command) -> Lines:
        assert isinstance(command.args, Id)
        return [untagged(Atom("ID"), ["name", "mailmux", "vendor", "mailmux"]),
                tagged(command.tag, "OK", "ID completed")]

    # not authenticated --------------------------------------------------------------------

    async def do_STARTTLS(self, command: Command) -> Lines:
        context = self.server.tls_context
        if context is None or self.tls:
            return [tagged(command.tag, "BAD", "STARTTLS is not available", "CLIENTBUG")]
        await self.send([tagged(command.tag, "OK", "begin TLS negotiation now")])
        await self.writer.start_tls(context)
        self.tls = True
        # RFC 3501 6.2.1: anything the client sent before the handshake is discarded.
        self.framer = CommandFramer(self.config.max_line_length, UNAUTHENTICATED_MAX_LITERAL,
                                    UNAUTHENTICATED_MAX_COMMAND)
        return []

    async def do_LOGIN(self, command: Command) -> Lines:
        assert isinstance(command.args, Login)
        return await self._login(command.tag, command.args.user, command.args.password)

    async def do_AUTHENTICATE(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Authenticate)
        if args.mechanism != "PLAIN":
            return [tagged(command.tag, "NO", "only PLAIN is supported", "CANNOT")]
        blob = args.initial
        if blob is None:
            await self.send([continuation()])
            event = await self.next_event()
            line = event.raw.strip() if isinstance(event, CommandBytes) else b"*"
            if line == b"*":
                return [tagged(command.tag, "BAD", "authentication cancelled")]
            try:
                blob = base64.b64decode(line, validate=True)
            except binascii.Error:
                return [tagged(command.tag, "BAD", "invalid base64", "CLIENTBUG")]
        parts = blob.split(b"\0")
        if len(parts) != 3:
            return [tagged(command.tag, "BAD", "malformed PLAIN response", "CLIENTBUG")]
        try:
            authzid, user, password = (p.decode() for p in parts)
        except UnicodeDecodeError:
            return [tagged(command.tag, "BAD", "credentials must be UTF-8", "CLIENTBUG")]
        if authzid and authzid.lower() != user.lower():
            return [tagged(command.tag, "NO", "cannot act as another user", "AUTHORIZATIONFAILED")]
        return await self._login(command.tag, user, password)

    async def _login(self, tag: str, user: str, password: str) -> Lines:
        user = user.strip().lower()
        failures = self.server.failures
        if failures.locked(user) > 0:
            # Not even checked: a guess made during the lockout is a wasted guess.
            self.failed_logins += 1
            log.info("imap %s: login for %s refused, locked after %d failures in the pool",
                     self.peer, user, failures.count(user))
            if self.failed_logins >= self.config.max_failed_logins:
                await self.send([tagged(tag, "NO", "invalid credentials", "AUTHENTICATIONFAILED"),
                                 untagged_status("BYE", "too many failed logins")])
                raise Closed("too many failed logins")
            return [tagged(tag, "NO", "invalid credentials", "AUTHENTICATIONFAILED")]
        if await self.store.authenticate(user, password):
            failures.succeeded(user)
            self.user = user
            self.state = State.AUTHENTICATED
            self.server.authenticated(self)
            self.framer.max_literal = self.config.max_message_size
            self.framer.max_command = self.config.max_command_size
            log.info("imap %s: %s logged in", self.peer, user)
            metrics.login("imap", True)
            caps = " ".join(self.capabilities())
            return [tagged(tag, "OK", "logged in", f"CAPABILITY {caps}")]
        self.failed_logins += 1
        if await self.store.has_user(user):
            failures.failed(user)
        metrics.login("imap", False)
        log.info("imap %s: failed login for %s (%d)", self.peer, user, self.failed_logins)
        delay = min(self.config.failed_login_delay * 2 ** (self.failed_logins - 1),
                    MAX_LOGIN_DELAY)
        await asyncio.sleep(delay)  # a rate limit on guessing, not synchronisation
        if self.failed_logins >= self.config.max_failed_logins:
            await self.send([tagged(tag, "NO", "invalid credentials", "AUTHENTICATIONFAILED"),
                             untagged_status("BYE", "too many failed logins")])
            raise Closed("too many failed logins")
        return [tagged(tag, "NO", "invalid credentials", "AUTHENTICATIONFAILED")]

    # authenticated ------------------------------------------------------------------------

    @property
    def me(self) -> str:
        assert self.user is not None
        return self.user

    async def do_ENABLE(self, command: Command) -> Lines:
        assert isinstance(command.args, Enable)
        newly = [c for c in command.args.capabilities
                 if c in ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT") and c not in self.enabled]
        condstore = {"CONDSTORE", "QRESYNC"} & set(newly)  # QRESYNC implies CONDSTORE
        highest = (await self._condstore_on()
                   if condstore and self.view is not None else [])
        self.enabled.update(newly)
        if "QRESYNC" in newly and self.view is not None:
            self.view.qresync = True
        return [untagged(Atom("ENABLED"), *[Atom(c) for c in newly]), *highest,
                tagged(command.tag, "OK", "ENABLE completed")]

    async def do_COMPRESS(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Compress)
        if args.mechanism != "DEFLATE":
            return [tagged(command.tag, "BAD", f"unknown mechanism {args.mechanism}",
                           "CLIENTBUG")]
        if self.deflater is not None:
            return [tagged(command.tag, "NO", "already compressing", "COMPRESSIONACTIVE")]
        await self.send([tagged(command.tag, "OK", "DEFLATE active")])
        self.deflater, self.inflater = Deflater(), Inflater()
        # whatever followed the command was compressed already
        self.inflater.feed(self.framer.take_buffered())
        return []

    async def do_NOTIFY(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Notify)
        if args.groups is None:
            self._notify_off()
            return await self.ok(command, "NOTIFY completed")
        bad = notify.unsupported(args)
        if bad:
            return [tagged(command.tag, "NO", f"events not supported: {' '.join(bad)}",
                           f"BADEVENT ({' '.join(notify.SUPPORTED_EVENTS)})")]
        if any(fetching.needs_body(g.fetch_attrs) for g in args.groups):
            return [tagged(command.tag, "BAD", "MessageNew takes FLAGS, UID, INTERNALDATE, "
                           "RFC822.SIZE and MODSEQ only", "CLIENTBUG")]
        self._notify_off()
        notifier = Notifier(args, "UTF8=ACCEPT" in self.enabled)
        infos = await self.store.list_mailboxes(self.me)
        subscriptions = await self.store.subscriptions(self.me)
        selected = self.view.mailbox_id if self.view is not None else None
        lines = await asyncio.to_thread(notifier.start, infos, subscriptions, selected,
                                        args.status)
        self.notifier = notifier
        self.store.commit_hooks.append(self._committed)
        return await self.ok(command, "NOTIFY completed", before=lines)

    async def do_NAMESPACE(self, command: Command) -> Lines:
        return [untagged(Atom("NAMESPACE"), [["", "/"]], None, [["Boards/", "/"]]),
                tagged(command.tag, "OK", "NAMESPACE completed")]

    def _unselect(self) -> None:
        if self.view is not None and self.feed is not None:
            self.store.unlisten(self.view.mailbox_id, self.feed)
        self.contexts.clear()
        self.view = None
        self.feed = None
        self.state = State.AUTHENTICATED

    async def do_SELECT(self, command: Command) -> Lines:
        return await self._select(command, readonly=False)

    async def do_EXAMINE(self, command: Command) -> Lines:
        return await self._select(command, readonly=True)

    async def _select(self, command: Command, readonly: bool) -> Lines:
        args = command.args
        assert isinstance(args, MailboxArg)
        closed: Lines = []
        if self.view is not None:
            closed = [untagged_status("OK", "previous mailbox closed", "CLOSED")]
            self._unselect()
        if args.qresync is not None and "QRESYNC" not in self.enabled:
            return [*closed, tagged(command.tag, "BAD", "ENABLE QRESYNC first", "CLIENTBUG")]
        if args.condstore or "QRESYNC" in self.enabled:
            self.enabled.add("CONDSTORE")
        await self.store.read_barrier(self.me)
        state = await self.store.select_state(self.me, args.mailbox)
        info = state.info
        # Listen first: a change committed after the snapshot still wakes this view.
        feed = self.store.listen(info.id)
        view = View(info.id, info.name, readonly, info.uidvalidity, state.uids,
                    modseq=info.highestmodseq, condstore="CONDSTORE" in self.enabled,
                    qresync="QRESYNC" in self.enabled, shared=state.shared)
        claims = self.server.recent
        key = (info.id, info.uidvalidity)
        view.recent = set(claims.peek(key, view.uids) if readonly else claims.claim(key, view.uids))
        self.view, self.feed = view, feed
        self.state = State.SELECTED
        first_unseen = (view.seq_of(state.first_unseen) or None
                        if state.first_unseen is not None else None)
        flags = sorted(set(SYSTEM_FLAGS) | set(state.keywords))
        self.known_flags = set(flags)
        lines = [
            *closed,
            untagged(Atom("FLAGS"), format_flags(flags)),
            untagged_status("OK", "flags clients may set", "PERMANENTFLAGS ("
                            + " ".join(PERMANENT_FLAGS if not readonly else ()) + ")"),
            untagged(view.exists, Atom("EXISTS")),
            untagged(len(view.recent), Atom("RECENT")),
        ]
        if first_unseen is not None:
            lines.append(untagged_status("OK", "first unseen", f"UNSEEN {first_unseen}"))
        lines += [
            untagged_status("OK", "UIDs valid", f"UIDVALIDITY {info.uidvalidity}"),
            untagged_status("OK", "predicted next UID", f"UIDNEXT {info.uidnext}"),
        ]
        if "CONDSTORE" in self.enabled:
            lines.append(untagged_status("OK", "highest", f"HIGHESTMODSEQ {info.highestmodseq}"))
        if args.qresync is not None and args.qresync.uidvalidity == info.uidvalidity:
            lines += await self._resync(args.qresync, info.uidnext)
        code = "READ-ONLY" if readonly else "READ-WRITE"
        return [*lines, tagged(command.tag, "OK", f"{command.name} completed", code)]

    async def _resync(self, params: QresyncParams, uidnext: int) -> Lines:
        """RFC 7162 3.2.5: what changed since the client's MODSEQ, as VANISHED (EARLIER) and
        FETCH. Every expunge is remembered with its MODSEQ (the store's `expunged` table), so
        the seq-match hint is not needed, and the cost is what changed, not the mailbox."""
        view = self.selected
        changes = await self.store.changes_since_modseq(self.me, view.mailbox_id, params.modseq)
        largest = uidnext - 1
        known = params.known_uids
        gone = [u for u in changes.expunged
                if u <= largest and (known is None or known.contains(u, largest))]
        lines = [untagged(Atom("VANISHED"), Atom("(EARLIER)"),
                          Atom(format_sequence_set(gone)))] if gone else []
        for uid, flags, modseq in changes.changed:
            seq = view.seq_of(uid)
            if seq and modseq <= view.modseq:  # later ones reach the client as updates
                lines.append(view.flags_response(uid, sorted(flags), modseq, with_uid=True,
                                                 seq=seq))
                view.reported(uid, modseq)
        lines[:0] = self._announce_flags({f for _, flags, _ in changes.changed for f in flags})
        return lines

    async def _vanished_earlier(self, sequence: SequenceSet, since: int) -> Lines:
        """UID FETCH ... (CHANGEDSINCE n VANISHED): the UIDs of the set expunged after n."""
        view = self.selected
        changes = await self.store.changes_since_modseq(self.me, view.mailbox_id, since)
        largest = max(view.uids[-1] if view.uids else 0, max(changes.expunged, default=0))
        gone = [u for u in changes.expunged if sequence.contains(u, largest)]
        if not gone:
            return []
        return [untagged(Atom("VANISHED"), Atom("(EARLIER)"), Atom(format_sequence_set(gone)))]

    async def do_CREATE(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, MailboxArg)
        uses = [u for u in args.special_use if u in
                ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged")]
        if len(uses) != len(args.special_use) or len(uses) > 1:
            return [tagged(command.tag, "NO", "unsupported special-use", "USEATTR")]
        await self.store.create_mailbox(self.me, args.mailbox.rstrip("/"),
                                        uses[0] if uses else None)
        return await self.ok(command, "CREATE completed")

    async def do_DELETE(self, command: Command) -> Lines:
        assert isinstance(command.args, MailboxArg)
        if self.view is not None and self.view.name == command.args.mailbox:
            self._unselect()
        await self.store.delete_mailbox(self.me, command.args.mailbox)
        return await self.ok(command, "DELETE completed")

    async def do_RENAME(self, command: Command) -> Lines:
        assert isinstance(command.args, Rename)
        await self.store.rename_mailbox(self.me, command.args.old, command.args.new)
        return await self.ok(command, "RENAME completed")

    async def do_SUBSCRIBE(self, command: Command) -> Lines:
        assert isinstance(command.args, MailboxArg)
        await self.store.get_mailbox(self.me, command.args.mailbox)
        await self.store.set_subscribed(self.me, command.args.mailbox, True)
        return await self.ok(command, "SUBSCRIBE completed")

    async def do_UNSUBSCRIBE(self, command: Command) -> Lines:
        assert isinstance(command.args, MailboxArg)
        await self.store.set_subscribed(self.me, command.args.mailbox, False)
        return await self.ok(command, "UNSUBSCRIBE completed")

    async def do_LIST(self, command: Command) -> Lines:
        return await self._list(command, lsub=False)

    async def do_LSUB(self, command: Command) -> Lines:
        return await self._list(command, lsub=True)

    async def _list(self, command: Command, lsub: bool) -> Lines:
        args = command.args
        assert isinstance(args, ListArgs)
        mailboxes = await self.store.list_mailboxes(self.me)
        subscribed = await self.store.subscriptions(self.me)
        utf8 = "UTF8=ACCEPT" in self.enabled
        if args.status_items is None or lsub:
            lines = await run_bounded(
                lambda b: list_responses(args, mailboxes, lsub, b, utf8, subscribed),
                self.config.command_cpu_budget)
            return await self.ok(command, f"{command.name} completed", before=lines)
        items = await run_bounded(lambda b: listed(args, mailboxes, set(subscribed), b),
                                  self.config.command_cpu_budget)
        infos = {m.name: m for m in mailboxes}
        out: Lines = []
        for item in items:
            out.append(format_listed(item, utf8))
            info = infos.get(item.name)
            if item.selectable and info is not None:  # LIST-STATUS (RFC 5819)
                out.append(await self._status_line(info, args.status_items))
        return await self.ok(command, "LIST completed", before=out)

    async def do_STATUS(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, StatusArgs)
        await self.store.read_barrier(self.me)
        info = await self.store.get_mailbox(self.me, args.mailbox)
        line = await self._status_line(info, args.items)
        return await self.ok(command, "STATUS completed", before=[line])

    async def _status_line(self, info: MailboxInfo, wanted: Sequence[str]) -> bytes:
        values = {"MESSAGES": info.messages,
                  "RECENT": await self._recent_count(wanted, info) if "RECENT" in wanted else 0,
                  "UIDNEXT": info.uidnext,
                  "UIDVALIDITY": info.uidvalidity, "UNSEEN": info.unseen,
                  "HIGHESTMODSEQ": info.highestmodseq, "SIZE": info.size}
        items: list[object] = []
        for item in wanted:
            items += [Atom(item), values[item]]
        # the name as the client wrote it: modified UTF-7 (RFC 3501 5.1.3)
        name = info.name if "UTF8=ACCEPT" in self.enabled else encode_mailbox(info.name)
        return untagged(Atom("STATUS"), name, items)

    async def _recent_count(self, wanted: Sequence[str], info: MailboxInfo) -> int:
        if "RECENT" not in wanted:
            return 0
        if self.view is not None and self.view.mailbox_id == info.id:
            return len(self.view.recent)
        key = (info.id, info.uidvalidity)
        if self.server.recent.marker(key) >= info.uidnext - 1:
            return 0  # nothing above the marker: no need to read the UIDs
        state = await self.store.select_state(self.me, info.name)
        return len(self.server.recent.peek(key, state.uids))

    async def do_APPEND(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Append)
        messages = [(args.flags, args.date, args.message, args.binary), *args.more]
        if args.catenate:
            try:
                messages = await self._catenated(args, messages)
            except MailboxNotFound:
                return [tagged(command.tag, "NO", f"no mailbox {args.mailbox}", "TRYCREATE")]
        if any(len(m[2]) > self.config.max_message_size for m in messages):
            return [tagged(command.tag, "NO", "message too large", "TOOBIG")]
        for flags, _, message, _ in messages:
            check_keywords(flags)
            await run_bounded(functools.partial(_check_structure, message, self.config),
                              self.config.command_cpu_budget)
        results: list[AppendResult] = []
        assigned: list[tuple[int, int]] = []  # (uidvalidity, uid), stored now or before
        # A replay id names one write; MULTIAPPEND makes one per message, so each gets its own.
        base = REPLAY.get() if len(messages) > 1 else None
        try:
            for index, (flags, when, message, _) in enumerate(messages):
                token = REPLAY.set(f"{base}.{index}") if base is not None else None
                try:
                    result = await self.store.append(
                        self.me, args.mailbox, message,
                        flags=[f for f in flags if f != "\\Recent"],
                        internaldate=when or datetime.now(UTC),
                    )
                except Replayed as done:  # this message was stored under this id before
                    assigned.append((int(done.answer["uidvalidity"]), int(done.answer["uid"])))
                    continue
                finally:
                    if token is not None:
                        REPLAY.reset(token)
                results.append(result)
                assigned.append((result.uidvalidity, result.uid))
        except BackendError as exc:
            # MULTIAPPEND is all or nothing (RFC 3502): take back the ones already stored
            if results:
                token = REPLAY.set(None)
                try:
                    await self.store.expunge(self.me, results[0].mailbox_id,
                                             [r.uid for r in results])
                finally:
                    REPLAY.reset(token)
            if isinstance(exc, MailboxNotFound):
                return [tagged(command.tag, "NO", f"no mailbox {args.mailbox}", "TRYCREATE")]
            raise
        uids = format_sequence_set([uid for _, uid in assigned])
        return await self.ok(command, "APPEND completed",
                             f"APPENDUID {assigned[0][0]} {uids}")

    async def _catenated(self, args: Append, messages: list[AppendedMessage]
                         ) -> list[AppendedMessage]:
        """CATENATE's messages put together; the target is checked first, so a missing one is
        TRYCREATE whatever the URLs say, and every URL before anything is stored (MULTIAPPEND
        is all or nothing)."""
        await self.store.get_mailbox(self.me, args.mailbox)
        out = []
        for (flags, when, data, binary), parts in zip(messages, args.catenate, strict=True):
            if parts is not None:
                data = await catenate.assemble(self.store, self.me, parts,
                                               self.config.max_message_size)
            out.append((flags, when, data, binary))
        return out

    async def do_IDLE(self, command: Command) -> Lines:
        await self.send([continuation("idling")])
        await self.store.read_barrier(self.me)
        await self.send(await self._idle_updates())
        self.idling = True
        reader = asyncio.ensure_future(self.next_event())
        try:
            while True:
                waiters: set[asyncio.Future[object]] = {reader}  # type: ignore[arg-type]
                feed_wait: asyncio.Future[int] | None = None
                if self.feed is not None:
                    feed_wait = asyncio.ensure_future(self.feed.get())
                    waiters.add(feed_wait)  # type: ignore[arg-type]
                woken: asyncio.Task[bool] | None = None
                if self.notifier is not None:  # NOTIFY: other mailboxes' events too
                    woken = asyncio.ensure_future(self.woken.wait())
                    waiters.add(woken)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if woken is not None and woken not in done:
                    woken.cancel()
                if feed_wait is not None:
                    if feed_wait in done:
                        assert self.feed is not None
                        self.feed.put_nowait(feed_wait.result())  # let updates() see it
                    else:
                        feed_wait.cancel()
                if reader in done:
                    break
                await self.send(await self._idle_updates())
                if self.contexts and self.view is not None:
                    await self.send(await self._context_updates())
        finally:
            self.idling = False
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Closed):
                    await reader
        event = reader.result()
        if not isinstance(event, CommandBytes) or event.raw.strip().upper() != b"DONE":
            return [tagged(command.tag, "BAD", "expected DONE", "CLIENTBUG")]
        return await self.ok(command, "IDLE terminated")

    async def _idle_updates(self) -> Lines:
        if self.notifier is None:
            return await self.updates()
        if self.notifier.selected_group() is None:
            # the selected mailbox's updates are IDLE's own, whatever the NOTIFY groups say
            return await self.updates() + await self._notifications()
        return await self._notifications()

    # selected -----------------------------------------------------------------------------

    @property
    def selected(self) -> View:
        assert self.view is not None
        return self.view

    async def do_CHECK(self, command: Command) -> Lines:
        await self.store.read_barrier(self.me)
        return await self.ok(command, "CHECK completed")

    async def do_CLOSE(self, command: Command) -> Lines:
        view = self.selected
        if not view.readonly:
            deleted = await self._deleted(view.uids)
            if deleted:
                with contextlib.suppress(NotPermitted):
                    await self.store.expunge(self.me, view.mailbox_id, deleted)
        self._unselect()
        return [tagged(command.tag, "OK", "CLOSE completed")]

    async def do_UNSELECT(self, command: Command) -> Lines:
        self._unselect()
        return [tagged(command.tag, "OK", "UNSELECT completed")]

    async def do_EXPUNGE(self, command: Command) -> Lines:
        view = self.selected
        if view.readonly:
            return [tagged(command.tag, "NO", "mailbox is read-only", "READ-ONLY")]
        pending = await self._refresh_now()
        args = command.args
        assert isinstance(args, Expunge)
        candidates = view.uids if args.sequence is None else view.resolve(args.sequence, True)
        deleted = await self._deleted(candidates)
        if deleted:
            await self.store.expunge(self.me, view.mailbox_id, deleted)
        return await self.ok(command, "EXPUNGE completed",
                             before=[*pending, *await self._refresh_now()])

    async def _deleted(self, candidates: Sequence[int]) -> list[int]:
        """The candidates (UIDs in the view) flagged \\Deleted, read from the store."""
        view = self.selected
        marked = await self.store.uids_with_flag(self.me, view.mailbox_id, "\\Deleted")
        wanted = set(candidates) if len(candidates) != view.exists else None
        return [u for u in marked if view.seq_of(u) and (wanted is None or u in wanted)]

    async def _refresh_now(self, allow_expunge: bool = True) -> Lines:
        view = self.selected
        if self.feed is not None:
            while not self.feed.empty():
                self.feed.get_nowait()
        changes = await self.store.changes_since_modseq(self.me, view.mailbox_id, view.modseq)
        return self._applied(changes, allow_expunge)

    async def do_SEARCH(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Search)
        view = self.selected
        before = await self._refresh_now(allow_expunge=command.uid)
        options = args.return_options
        if _uses_modseq(args.key):
            before += await self._condstore_on()
        try:
            found = await self._search_uids(args.key)
        except BackendError:
            if options is not None and "SAVE" in options:
                view.saved = []
            raise
        uids = sorted(found)
        hits = uids if command.uid else [view.seq_of(u) for u in uids]
        highest = None
        if _uses_modseq(args.key) and uids:
            # RFC 7162 3.1.5: with only MIN and/or MAX asked, the MODSEQ of those messages
            reported = uids
            asked = set(options or ())
            if asked and asked <= {"MIN", "MAX"}:
                reported = [uids[0]] * ("MIN" in asked) + [uids[-1]] * ("MAX" in asked)
            highest = max(found[u] for u in reported)
        if options is None:
            values: list[object] = [Atom("SEARCH"), *hits]
            if highest is not None:
                values.append([Atom("MODSEQ"), highest])
            return [*before, untagged(*values), tagged(command.tag, "OK", "SEARCH completed")]
        lines = [*before, *self._returned(command, options, uids, hits, sort=False,
                                          partial=args.partial, modseq=highest)]
        if "UPDATE" in options:
            # RFC 5267 4.3.1: a context the server will not keep is refused with NOUPDATE;
            # MIN, MAX and PARTIAL would need more than ADDTO/REMOVEFROM of members.
            key = _seqsets_as_uids(args.key, view)
            if {"MIN", "MAX", "PARTIAL"} & set(options) or not self.contexts.add(
                    UpdateContext(command.tag, command.uid, key, set(uids), view.modseq)):
                lines.append(_noupdate(command.tag))
        return [*lines, tagged(command.tag, "OK", "SEARCH completed")]

    def _returned(self, command: Command, options: tuple[str, ...], uids: list[int],
                  hits: list[int], sort: bool, partial: tuple[int, int] | None,
                  modseq: int | None) -> Lines:
        """The ESEARCH answer to RETURN (...), and SEARCHRES's SAVE (RFC 5182): with only MIN
        and/or MAX asked, only those are saved; RETURN (SAVE) alone answers nothing."""
        view = self.selected
        asked = set(options)
        if "SAVE" in asked:
            if asked & {"MIN", "MAX"} and not asked & {"ALL", "COUNT", "PARTIAL"} and uids:
                ends = sorted(uids)
                picked = ({ends[0]} if "MIN" in asked else set()) | (
                    {ends[-1]} if "MAX" in asked else set())
                view.saved = sorted(picked)
            else:
                view.saved = sorted(uids)
            if asked <= {"SAVE", "CONTEXT"}:
                return []
        result = Result(command.tag, command.uid, hits, wanted(options), sorted=sort,
                        partial=partial, modseq=modseq)
        return [result.line()]

    async def _context_updates(self) -> Lines:
        """ADDTO/REMOVEFROM for the live RETURN (UPDATE) contexts: the messages changed since
        each context last looked are searched again, nothing else."""
        view = self.view
        if view is None or not self.contexts:
            return []
        try:
            changes = await self.store.changes_since_modseq(self.me, view.mailbox_id,
                                                            self.contexts.oldest())
        except MailboxNotFound:
            return []
        out: Lines = []
        for context in list(self.contexts.live.values()):
            fresh = [(uid, modseq) for uid, _, modseq in changes.changed
                     if modseq > context.modseq]
            candidates = sorted({uid for uid, _ in fresh if view.seq_of(uid)})
            # a change to a message not yet announced is weighed once it is
            waiting = [m for uid, m in fresh if not view.seq_of(uid)]
            horizon = min(waiting) - 1 if waiting else changes.highestmodseq
            if not candidates:
                context.modseq = max(context.modseq, horizon)
                continue
            program = SearchKey("AND", (), (context.key, SearchKey("UID", (_runs(candidates),))))
            try:
                matched = set(await self._search_uids(program))
            except BackendError as exc:
                # The command itself succeeded: this context ends (RFC 5267 4.3.1), not it.
                log.info("imap %s (%s): update context %s dropped: %s", self.peer, self.user,
                         context.tag, exc)
                self.contexts.cancel([context.tag])
                out.append(_noupdate(context.tag))
                continue
            out += self.contexts.weighed(context, candidates, matched, view, horizon)
        return out

    async def do_CANCELUPDATE(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, CancelUpdate)
        unknown = self.contexts.cancel(args.tags)
        if unknown:
            return [tagged(command.tag, "BAD", f"no update context for tag {unknown[0]}",
                           "CLIENTBUG")]
        return await self.ok(command, "CANCELUPDATE completed")

    async def _search_uids(self, program: SearchKey) -> dict[int, int]:
        """UID -> MODSEQ of the messages in the view that a SEARCH program matches."""
        view = self.selected
        largest_uid = view.uids[-1] if view.uids else 0
        key = _seqsets_as_uids(program, view)
        found: dict[int, int] = {}
        check: list[int] = []
        for uid, modseq, unsure in await self.store.search(self.me, view.mailbox_id, key,
                                                           largest_uid):
            if view.seq_of(uid):  # not yet announced to this client: not searched
                if unsure:
                    check.append(uid)
                else:
                    found[uid] = modseq
        for confirmed in await self._over_bodies(
                check, lambda rows, budget: _confirm(key, rows, largest_uid, budget)):
            found.update(confirmed)
        return found

    async def _over_bodies(self, uids: list[int],
                           work: Callable[[list[Row], Budget], T]) -> list[T]:
        """WORK on the messages UIDS with their bodies, a chunk at a time, in a worker thread
        (parsing and matching are CPU work: never on the event loop), within the CPU budget."""
        view = self.selected
        budget = Budget(self.config.command_cpu_budget)
        out: list[T] = []
        for start in range(0, len(uids), SEARCH_CHECK_CHUNK):
            budget.check()
            rows = await self.store.fetch_rows(self.me, view.mailbox_id,
                                               uids[start:start + SEARCH_CHECK_CHUNK],
                                               with_body=True)
            out.append(await asyncio.to_thread(work, rows, budget))
        return out

    async def do_SORT(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Sort)
        view = self.selected
        before = await self._refresh_now(allow_expunge=command.uid)
        found = sorted(await self._search_uids(args.key))
        if all(name in _METADATA_CRITERIA for _, name in args.criteria):
            keyed = await self._metadata_keys(found, args.criteria)
        else:
            work = functools.partial(_sort_keyed, args.criteria)
            keyed = [k for chunk in await self._over_bodies(found, work) for k in chunk]
        # Sorting many messages is CPU work: never on the event loop.
        ordered = await asyncio.to_thread(order_keyed, keyed, args.criteria)
        hits = ordered if command.uid else [view.seq_of(u) for u in ordered]
        if args.return_options is None:
            lines = [untagged(Atom("SORT"), *hits)]
        else:
            lines = self._returned(command, args.return_options, ordered, hits, sort=True,
                                   partial=args.partial, modseq=None)
            if "UPDATE" in args.return_options:
                # Positions in a sorted result would need every member's sort key kept
                # current: refused as RFC 5267 4.3.1 allows, the answer itself is complete.
                lines.append(_noupdate(command.tag))
        return [*before, *lines, tagged(command.tag, "OK", "SORT completed")]

    async def _metadata_keys(self, uids: list[int],
                             criteria: tuple[tuple[bool, str], ...]) -> list[Keyed]:
        """ARRIVAL and SIZE need no message content: rows without bodies, nothing parsed;
        the keys are made in a worker thread, a chunk at a time."""
        view = self.selected
        empty = ParsedMessage.from_bytes(b"")
        out: list[Keyed] = []
        for start in range(0, len(uids), FETCH_CHUNK):
            rows = await self.store.fetch_rows(self.me, view.mailbox_id,
                                               uids[start:start + FETCH_CHUNK])
            out += await asyncio.to_thread(_metadata_keyed, criteria, empty, rows)
        return out

    async def do_THREAD(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Thread)
        view = self.selected
        before = await self._refresh_now(allow_expunge=command.uid)
        found = sorted(await self._search_uids(args.key))
        inputs = [i for chunk in await self._over_bodies(found, _thread_inputs) for i in chunk]
        name: Callable[[int], int] = (lambda u: u) if command.uid else view.seq_of
        # Threading many messages is CPU work: never on the event loop.
        text = await asyncio.to_thread(
            lambda: format_threads(thread(args.algorithm, inputs), name))
        return [*before, f"* THREAD {text}".rstrip().encode() + b"\r\n",
                tagged(command.tag, "OK", "THREAD completed")]

    async def do_FETCH(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Fetch)
        if (fetching.body_items(args.attrs) > MAX_FETCH_BODY_ITEMS
                or len(args.attrs) > MAX_FETCH_ITEMS):
            return [tagged(command.tag, "NO", f"at most {MAX_FETCH_BODY_ITEMS} body items and "
                           f"{MAX_FETCH_ITEMS} items in one FETCH", "LIMIT")]
        view = self.selected
        if args.vanished and (not command.uid or "QRESYNC" not in self.enabled):
            return [tagged(command.tag, "BAD", "VANISHED needs UID FETCH and ENABLE QRESYNC",
                           "CLIENTBUG")]
        await self.send(await self.updates(allow_expunge=command.uid))
        uids = view.resolve(args.sequence, command.uid)
        attrs = args.attrs
        if args.vanished and args.changed_since is not None:
            await self.send(await self._vanished_earlier(args.sequence, args.changed_since))
        with_modseq = args.changed_since is not None
        if with_modseq or any(a.name == "MODSEQ" for a in attrs):
            await self.send(await self._condstore_on())
        mark_seen = fetching.sets_seen(attrs) and not view.readonly
        if mark_seen and not any(a.name == "FLAGS" for a in attrs):
            attrs = (*attrs, FetchAttr("FLAGS"))
        with_body = fetching.needs_body(attrs)
        template = fetching.light_template(attrs, with_uid=command.uid, with_modseq=with_modseq)
        if template is not None and not mark_seen:
            last = await self._fetch_light(template, uids, args.changed_since)
            return [*last, tagged(command.tag, "OK", "FETCH completed")]
        out = _Output(self)
        for start in range(0, len(uids), FETCH_CHUNK):
            rows = await self.store.fetch_rows(self.me, view.mailbox_id,
                                               uids[start:start + FETCH_CHUNK])
            if args.changed_since is not None:
                rows = [r for r in rows if r[0].modseq > args.changed_since]
            if mark_seen:
                rows = await self._mark_seen(rows)
            if with_body:
                await self._fetch_bodies(command.uid, with_modseq, attrs, [r[0] for r in rows],
                                         out)
                continue
            for meta, _ in rows:
                for announce in self._announce_flags(set(meta.flags)):
                    await out.add(announce)
                items = fetching.render(attrs, self._recent(meta), None, with_uid=command.uid,
                                        with_modseq=with_modseq)
                await out.add(untagged(view.seq_of(meta.uid), Atom("FETCH"), items))
        await out.flush()
        return [tagged(command.tag, "OK", "FETCH completed")]

    def _recent(self, meta: MessageMeta) -> MessageMeta:
        if meta.uid not in self.selected.recent:
            return meta
        return dataclasses.replace(meta, flags=meta.flags | {"\\Recent"})

    async def _fetch_light(self, template: tuple[str, tuple[str, ...]], uids: list[int],
                           changed_since: int | None) -> Lines:
        """Sends every chunk but the last, which it returns: a small FETCH leaves in one write
        with its tagged OK."""
        view = self.selected
        pending: Lines = []
        line, fields = template
        pick = operator.itemgetter(*(_ROW_FIELDS.index(f) for f in fields))
        known = view.uids
        recent = view.recent
        for start in range(0, len(uids), FETCH_CHUNK):
            await self.send(pending)
            pending = []
            chunk = uids[start:start + FETCH_CHUNK]
            first = view.seq_of(chunk[0])
            if (changed_since is None and len(chunk) > INLINE_ROWS
                    and view.seq_of(chunk[-1]) - first == len(chunk) - 1):
                # A gapless stretch of the view (1:* is one): one statement, joined columns.
                # SQLite knows nothing of \Recent: the chunk's UIDs, never all of `recent`
                mine = frozenset(u for u in chunk if u in recent) if recent else frozenset()
                made = await self.store.flag_lines(view.mailbox_id, chunk, first, fields, mine)
                if made is not None:
                    pending = [made]
                    continue
            rows = await self.store.flag_rows(self.me, view.mailbox_id, chunk)
            if "flags" in fields:
                pending = self._announce_flags({f for _, text, _ in rows for f in text.split()})
            out = []
            i = -1
            for uid, flags, modseq in rows:
                if changed_since is not None and modseq <= changed_since:
                    continue
                if uid in recent:
                    flags = " ".join(sorted([*flags.split(), "\\Recent"]))
                i += 1  # a range of the view is mostly contiguous: try the next position first
                if i >= len(known) or known[i] != uid:
                    i = bisect.bisect_left(known, uid)
                out.append(line % pick((i + 1, uid, flags, modseq)))
            pending.append("".join(out).encode())  # a chunk at a time, drained
        return pending

    async def _fetch_bodies(self, with_uid: bool, with_modseq: bool,
                            attrs: tuple[FetchAttr, ...], metas: list[MessageMeta],
                            out: _Output) -> None:
        """Bodies are read a bounded batch at a time (by bytes), never a whole range."""
        view = self.selected
        parse = fetching.needs_parse(attrs)
        batch: list[MessageMeta] = []
        size = 0
        for i, meta in enumerate(metas):
            batch.append(meta)
            size += meta.size
            if size < BODY_BATCH_BYTES and len(batch) < FETCH_BODY_CHUNK and i + 1 < len(metas):
                continue
            fresh = {m.uid: m for m in batch}
            rows = await self.store.fetch_rows(self.me, view.mailbox_id, [m.uid for m in batch],
                                               with_body=True)
            for row, raw in rows:
                for announce in self._announce_flags(set(row.flags)):
                    await out.add(announce)
                items = fetching.render_items(attrs, self._recent(fresh[row.uid]), raw,
                                              with_uid=with_uid, with_modseq=with_modseq)
                await out.message(view.seq_of(row.uid), items, parse)
            batch, size = [], 0

    async def _mark_seen(self, rows: list[tuple[MessageMeta, bytes | None]]
                         ) -> list[tuple[MessageMeta, bytes | None]]:
        view = self.selected
        unseen = [m.uid for m, _ in rows if "\\Seen" not in m.flags]
        if not unseen:
            return rows
        try:
            result = await self.store.store_flags(self.me, view.mailbox_id, unseen, "add",
                                                  ["\\Seen"], source=self.feed)
        except NoMajority:
            # A node cut off from the pool's majority still serves reads: BODY[] then
            # behaves like BODY.PEEK[] (the change could not be made safely).
            return rows
        changed = {c.uid: c for c in result.changed}
        for change in result.changed:
            view.reported(change.uid, change.modseq)
        return [(dataclasses.replace(m, flags=changed[m.uid].flags,
                                     modseq=changed[m.uid].modseq) if m.uid in changed else m,
                 raw) for m, raw in rows]

    async def do_STORE(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Store)
        view = self.selected
        if view.readonly:
            return [tagged(command.tag, "NO", "mailbox is read-only", "READ-ONLY")]
        before = await self.updates(allow_expunge=command.uid)
        uids = view.resolve(args.sequence, command.uid)
        if args.unchanged_since is not None:
            before += await self._condstore_on()
        # \\Recent is the server's to set (RFC 3501 2.3.2)
        flags = [f for f in args.flags if f != "\\Recent"]
        check_keywords(flags)
        # This session tells its client about the change itself (or the client asked for
        # silence): its own commit need not wake it for a catch-up read.
        result = await self.store.store_flags(self.me, view.mailbox_id, uids, args.mode,
                                              flags, args.unchanged_since, source=self.feed)
        lines: Lines = [*before, *self._announce_flags(set(flags))]
        changed = {c.uid: c for c in result.changed}
        for change in result.changed:
            view.reported(change.uid, change.modseq)
        failed = set(result.failed_unchanged_since)
        if args.silent:
            # RFC 7162 3.2: with CONDSTORE, a silent STORE still reports the new MODSEQs.
            report = [changed[u] for u in uids if view.condstore and u in changed]
        else:
            unchanged = [u for u in uids if u not in changed and u not in failed]
            current = {m.uid: FlagChange(m.uid, m.flags, m.modseq) for m, _ in
                       await self.store.fetch_rows(self.me, view.mailbox_id, unchanged)}
            report = [changed.get(u) or current[u] for u in uids
                      if u in changed or u in current]
        # another session's keyword may be on these messages before this one announced it
        lines += self._announce_flags({f for c in report for f in c.flags})
        for c in report:
            lines.append(view.flags_response(c.uid, c.flags, c.modseq, with_uid=command.uid))
        code = None
        if result.failed_unchanged_since:
            failed_numbers = result.failed_unchanged_since if command.uid else [
                view.seq_of(u) for u in result.failed_unchanged_since]
            code = f"MODIFIED {format_sequence_set(list(failed_numbers))}"
        return [*lines, tagged(command.tag, "OK", "STORE completed", code)]

    async def do_COPY(self, command: Command) -> Lines:
        return await self._copy(command, move=False)

    async def do_MOVE(self, command: Command) -> Lines:
        if self.selected.readonly:
            return [tagged(command.tag, "NO", "mailbox is read-only", "READ-ONLY")]
        return await self._copy(command, move=True)

    async def _copy(self, command: Command, move: bool) -> Lines:
        args = command.args
        assert isinstance(args, CopyMove)
        view = self.selected
        uids = view.resolve(args.sequence, command.uid)
        if not uids:
            return await self.ok(command, f"{command.name} completed (nothing to do)")
        operation = self.store.move if move else self.store.copy
        try:
            result = await operation(self.me, view.mailbox_id, uids, args.mailbox)
        except MailboxNotFound:
            return [tagged(command.tag, "NO", f"no mailbox {args.mailbox}", "TRYCREATE")]
        code = None
        if result.pairs:
            code = (f"COPYUID {result.uidvalidity} "
                    f"{format_sequence_set([p[0] for p in result.pairs])} "
                    f"{format_sequence_set([p[1] for p in result.pairs])}")
        if not move:
            return await self.ok(command, "COPY completed", code)
        lines = [untagged_status("OK", "moved", code)] if code else []
        lines += await self._refresh_now()
        return [*lines, tagged(command.tag, "OK", "MOVE completed")]


def _encoded_item(items: Iterator[tuple[Atom, object]]) -> bytes | None:
    item = next(items, None)
    return None if item is None else encode_value(item[0]) + b" " + encode_value(item[1])


def _check_structure(message: bytes, config: BackendConfig, _: Budget) -> None:
    check_structure(message, config.max_mime_parts, config.max_mime_depth)


class _Output:
    """FETCH responses leave in chunks as they are made, waiting for the client to read
    (drain) before making more: a large FETCH holds one chunk in memory, not the answer."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.lines: Lines = []
        self.size = 0

    async def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= OUTPUT_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        lines, self.lines, self.size = self.lines, [], 0
        await self.session.send(lines)

    async def message(self, seq: int, items: Iterator[tuple[Atom, object]],
                      parse: bool = True) -> None:
        """One `* n FETCH (...)` made and sent item by item: 50 copies of a big body are
        never held at once. A part the message lacks (FetchError) leaves the message out when
        nothing of it was sent yet, else ends its list early."""
        pending: list[bytes] = [b"* %d FETCH (" % seq]
        size, first, written = len(pending[0]), True, False
        try:
            # Each item is made in a worker thread: parsing a poison message (a header of
            # megabytes, thousands of parts) must not stall the event loop.
            # Whole bodies and plain attributes are only copied: made here, no thread hop.
            while (item := (await asyncio.to_thread(_encoded_item, items) if parse
                            else _encoded_item(items))) is not None:
                piece = item if first else b" " + item
                first = False
                pending.append(piece)
                size += len(piece)
                if size >= OUTPUT_CHUNK:
                    for chunk in pending:
                        await self.add(chunk)
                    pending, size, written = [], 0, True
        except fetching.FetchError:
            if not written:
                return
        pending.append(b")\r\n")
        await self.add(b"".join(pending))


def _noupdate(tag: str) -> bytes:
    return untagged_status("NO", "no updates for this result", f"NOUPDATE {quote(tag).decode()}")


def _head(raw: bytes | None) -> Part:
    """The message's header alone, parsed: SORT and THREAD keys are header fields, and a
    message's MIME structure (every part of a big attachment) need not be split for them."""
    data = raw or b""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
    return ParsedMessage.from_bytes(data[:min(ends)] if ends else data)


def _metadata_keyed(criteria: tuple[tuple[bool, str], ...], empty: Part,
                    rows: list[tuple[MessageMeta, bytes | None]]) -> list[Keyed]:
    return [sort_keys(Candidate(meta.uid, meta, empty), criteria) for meta, _ in rows]


def _sort_keyed(criteria: tuple[tuple[bool, str], ...],
                rows: list[tuple[MessageMeta, bytes | None]], budget: Budget) -> list[Keyed]:
    """Each message reduced to its sort keys at once: no parsed message (nor its bytes)
    outlives its chunk, however many messages the SORT covers."""
    out = []
    for meta, raw in rows:
        budget.check()
        out.append(sort_keys(Candidate(meta.uid, meta, _head(raw)), criteria))
    return out


def _thread_inputs(rows: list[tuple[MessageMeta, bytes | None]],
                   budget: Budget) -> list[ThreadInput]:
    out = []
    for meta, raw in rows:
        budget.check()
        msg = _head(raw)
        references = message_ids(msg.text("references")) or message_ids(
            msg.text("in-reply-to"))[:1]
        own = message_ids(msg.text("message-id"))
        out.append(ThreadInput(meta.uid, sent_time(msg, meta), msg.text("subject") or "",
                               own[0] if own else None, tuple(references)))
    return out


def _confirm(key: SearchKey, rows: list[tuple[MessageMeta, bytes | None]],
             largest_uid: int, budget: Budget) -> dict[int, int]:
    """The RFC 3501 matcher on candidates the index could only narrow down."""
    out = {}
    for meta, raw in rows:
        budget.check()
        parsed = ParsedMessage.from_bytes(raw or b"")
        # Sequence-number keys were turned into UID keys: the number is not needed here.
        if matches(key, SearchContext(0, meta, _constant(parsed), largest_uid=largest_uid)):
            out[meta.uid] = meta.modseq
    return out


def _runs(uids: list[int]) -> SequenceSet:
    """Ascending UIDs as ranges of consecutive ones (recent mail is mostly one run)."""
    ranges: list[SeqRange] = []
    for uid in uids:
        if ranges and ranges[-1].high == uid - 1:
            ranges[-1] = SeqRange(ranges[-1].low, uid)
        else:
            ranges.append(SeqRange(uid, uid))
    return SequenceSet(tuple(ranges))


def _seqsets_as_uids(key: SearchKey, view: View) -> SearchKey:
    """SEQSET keys as the UID ranges they name in this view, so the store can answer them;
    `$` (SEARCHRES) as the saved UIDs still in the view; RECENT, NEW and OLD as the UIDs whose
    \\Recent this session owns."""
    if key.name in ("RECENT", "NEW", "OLD"):
        mine = SearchKey("UID", (_runs(sorted(view.recent)),))
        if key.name == "NEW":
            return SearchKey("AND", (), (mine, SearchKey("UNSEEN")))
        return mine if key.name == "RECENT" else SearchKey("NOT", (), (mine,))
    if key.name in ("SEQSET", "UID") and getattr(key.args[0], "saved", False):
        return SearchKey("UID", (_runs(view.resolve(SequenceSet((), saved=True), True)),))
    if key.name == "SEQSET":
        seqset = key.args[0]
        assert isinstance(seqset, SequenceSet)
        count = len(view.uids)
        ranges = []
        for r in seqset.ranges:
            lo, hi = r.bounds(count)
            lo, hi = max(lo, 1), min(hi, count)
            if lo <= hi:
                ranges.append(SeqRange(view.uids[lo - 1], view.uids[hi - 1]))
        return SearchKey("UID", (SequenceSet(tuple(ranges)),))
    if not key.children:
        return key
    return dataclasses.replace(key, children=tuple(_seqsets_as_uids(c, view)
                                                   for c in key.children))


def _constant(parsed: Part | None) -> Callable[[], Part]:
    def load() -> Part:
        assert parsed is not None, "a key needing the message was not planned for"
        return parsed

    return load


def _walk(key: SearchKey) -> list[SearchKey]:
    out = [key]
    for child in key.children:
        out += _walk(child)
    return out


def _uses_modseq(key: SearchKey) -> bool:
    return any(k.name == "MODSEQ" for k in _walk(key))


