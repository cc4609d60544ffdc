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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mailmux import metrics
from mailmux.backend.errors import BackendError, MailboxNotFound, NotPermitted
from mailmux.backend.imap import fetch as fetching
from mailmux.backend.imap.budget import Budget, run_bounded
from mailmux.backend.imap.listing import list_responses
from mailmux.backend.imap.states import ALLOWED, CAPABILITIES, NO_EXPUNGE_DURING, State
from mailmux.backend.imap.view import View
from mailmux.backend.message.parsed import ParsedMessage, Part
from mailmux.backend.message.search import SearchContext, matches
from mailmux.protocol.imap.commands import (
    Append,
    Authenticate,
    Command,
    CopyMove,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    Rename,
    Search,
    SearchKey,
    StatusArgs,
    Store,
)
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.framing import (
    CommandBytes,
    CommandFramer,
    FramingError,
    LiteralContinue,
    NeedData,
)
from mailmux.protocol.imap.mutf7 import encode_mailbox
from mailmux.protocol.imap.parser import parse_command
from mailmux.protocol.imap.response import (
    Atom,
    continuation,
    format_flags,
    format_sequence_set,
    tagged,
    untagged,
    untagged_status,
)
from mailmux.tcp import quickack

if TYPE_CHECKING:
    from mailmux.backend.imap.server import ImapServer

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
UNAUTHENTICATED_MAX_LITERAL = 4 * 1024
UNAUTHENTICATED_MAX_COMMAND = 8 * 1024  # every line and literal of one command, before login
MAX_LOGIN_DELAY = 30.0
PERMANENT_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*")
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

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
        self.failed_logins = 0
        self.tls = False
        self.started = asyncio.get_running_loop().time()

    # I/O ------------------------------------------------------------------------------------

    async def send(self, lines: Lines) -> None:
        if lines:
            self.writer.write(b"".join(lines))
            await self.writer.drain()

    def _timeout(self) -> float:
        if self.state is State.NOT_AUTHENTICATED:
            elapsed = asyncio.get_running_loop().time() - self.started
            return max(0.0, self.config.login_timeout - elapsed)
        return self.config.idle_timeout

    async def next_event(self) -> CommandBytes | FramingError:
        while True:
            event = self.framer.next_event()
            if isinstance(event, NeedData):
                try:
                    async with asyncio.timeout(self._timeout()):
                        data = await self.reader.read(READ_SIZE)
                except TimeoutError:
                    reason = ("login timeout" if self.state is State.NOT_AUTHENTICATED
                              else "autologout, idle for too long")
                    await self.send([untagged_status("BYE", reason)])
                    raise Closed(reason) from None
                if not data:
                    raise Closed("client closed the connection")
                self.framer.receive_data(data)
                quickack(self.writer)
                continue
            if isinstance(event, LiteralContinue):
                await self.send([continuation("Ready for literal data")])
                continue
            return event

    # main loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        caps = " ".join(self.capabilities())
        await self.send([untagged_status("OK", "mailmux ready", f"CAPABILITY {caps}")])
        while self.state is not State.LOGOUT:
            event = await self.next_event()
            if isinstance(event, FramingError):
                await self.send([self._framing_reply(event)])
                if event.fatal:
                    raise Closed(event.message)
                continue
            try:
                command = parse_command(event.raw)
            except ParseError as exc:
                code = exc.code or "CLIENTBUG" if exc.tag else exc.code
                if exc.tag is None:
                    await self.send([untagged_status("BAD", exc.message, code)])
                else:
                    await self.send([tagged(exc.tag, exc.status, exc.message, code)])
                continue
            await self.send(await self.dispatch(command))

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

    async def dispatch(self, command: Command) -> Lines:
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
        with self.server.meter.transaction():
            try:
                lines = await handler(command)
            except BackendError as exc:
                lines = [exc.imap_reply(command.tag)]
            except Closed:
                raise
            except (OSError, ValueError, LookupError) as exc:
                log.exception("imap %s (%s): %s failed", self.peer, self.user, command.name)
                lines = [tagged(command.tag, "NO", f"internal error: {type(exc).__name__}",
                                "SERVERBUG")]
            finally:
                metrics.observe_command(
                    f"UID {command.name}" if command.uid else command.name,
                    time.monotonic() - started)
        return lines

    # pending updates ----------------------------------------------------------------------

    async def updates(self, allow_expunge: bool = True) -> Lines:
        """Untagged responses for what other sessions changed in the selected mailbox."""
        if self.view is None or self.feed is None:
            return []
        drained = False
        while not self.feed.empty():
            self.feed.get_nowait()
            drained = True
        if not drained:
            return []
        assert self.user is not None
        try:
            metas = await self.store.messages(self.user, self.view.mailbox_id)
        except MailboxNotFound:
            self._unselect()
            return [untagged_status("BYE", "the selected mailbox was deleted")]
        return self.view.refresh(metas, allow_expunge)

    async def ok(self, command: Command, text: str, code: str | None = None,
                 before: Lines | None = None) -> Lines:
        allow = not (command.name in NO_EXPUNGE_DURING and not command.uid)
        return [*(before or []), *await self.updates(allow), tagged(command.tag, "OK", text, code)]

    # any state ----------------------------------------------------------------------------

    async def do_CAPABILITY(self, command: Command) -> Lines:
        return [untagged(Atom("CAPABILITY"), *[Atom(c) for c in self.capabilities()]),
                tagged(command.tag, "OK", "CAPABILITY completed")]

    async def do_NOOP(self, command: Command) -> Lines:
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
        if await self.store.authenticate(user, password):
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
        newly = [c for c in command.args.capabilities if c == "CONDSTORE"
                 and c not in self.enabled]
        self.enabled.update(newly)
        if "CONDSTORE" in self.enabled and self.view is not None:
            self.view.condstore = True
        return [untagged(Atom("ENABLED"), *[Atom(c) for c in newly]),
                tagged(command.tag, "OK", "ENABLE completed")]

    async def do_NAMESPACE(self, command: Command) -> Lines:
        return [untagged(Atom("NAMESPACE"), [["", "/"]], None, [["Boards/", "/"]]),
                tagged(command.tag, "OK", "NAMESPACE completed")]

    def _unselect(self) -> None:
        if self.view is not None and self.feed is not None:
            self.store.unlisten(self.view.mailbox_id, self.feed)
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
        if args.condstore:
            self.enabled.add("CONDSTORE")
        info = await self.store.get_mailbox(self.me, args.mailbox)
        feed = self.store.listen(info.id)
        metas = await self.store.messages(self.me, info.id)
        view = View(info.id, info.name, readonly, info.uidvalidity,
                    condstore="CONDSTORE" in self.enabled)
        view.load(metas)
        self.view, self.feed = view, feed
        self.state = State.SELECTED
        first_unseen = next((i + 1 for i, m in enumerate(metas) if "\\Seen" not in m.flags),
                            None)
        flags = sorted(set(SYSTEM_FLAGS) | {f for m in metas for f in m.flags})
        lines = [
            *closed,
            untagged(Atom("FLAGS"), format_flags(flags)),
            untagged_status("OK", "flags clients may set", "PERMANENTFLAGS ("
                            + " ".join(PERMANENT_FLAGS if not readonly else ()) + ")"),
            untagged(len(metas), Atom("EXISTS")),
            untagged(0, Atom("RECENT")),
        ]
        if first_unseen is not None:
            lines.append(untagged_status("OK", "first unseen", f"UNSEEN {first_unseen}"))
        lines += [
            untagged_status("OK", "UIDs valid", f"UIDVALIDITY {info.uidvalidity}"),
            untagged_status("OK", "predicted next UID", f"UIDNEXT {info.uidnext}"),
        ]
        if "CONDSTORE" in self.enabled:
            lines.append(untagged_status("OK", "highest", f"HIGHESTMODSEQ {info.highestmodseq}"))
        code = "READ-ONLY" if readonly else "READ-WRITE"
        return [*lines, tagged(command.tag, "OK", f"{command.name} completed", code)]

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
        assert isinstance(command.args, ListArgs)
        mailboxes = await self.store.list_mailboxes(self.me)
        args = command.args
        lines = await run_bounded(lambda b: list_responses(args, mailboxes, False, b),
                                  self.config.command_cpu_budget)
        return await self.ok(command, "LIST completed", before=lines)

    async def do_LSUB(self, command: Command) -> Lines:
        assert isinstance(command.args, ListArgs)
        mailboxes = await self.store.list_mailboxes(self.me)
        args = command.args
        lines = await run_bounded(lambda b: list_responses(args, mailboxes, True, b),
                                  self.config.command_cpu_budget)
        return await self.ok(command, "LSUB completed", before=lines)

    async def do_STATUS(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, StatusArgs)
        info = await self.store.get_mailbox(self.me, args.mailbox)
        values = {"MESSAGES": info.messages, "RECENT": 0, "UIDNEXT": info.uidnext,
                  "UIDVALIDITY": info.uidvalidity, "UNSEEN": info.unseen,
                  "HIGHESTMODSEQ": info.highestmodseq, "SIZE": info.size}
        items: list[object] = []
        for item in args.items:
            items += [Atom(item), values[item]]
        # the name as the client wrote it: modified UTF-7 (RFC 3501 5.1.3)
        line = untagged(Atom("STATUS"), encode_mailbox(info.name), items)
        return await self.ok(command, "STATUS completed", before=[line])

    async def do_APPEND(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Append)
        if len(args.message) > self.config.max_message_size:
            return [tagged(command.tag, "NO", "message too large", "TOOBIG")]
        try:
            result = await self.store.append(
                self.me, args.mailbox, args.message,
                flags=[f for f in args.flags if f != "\\Recent"],
                internaldate=args.date or datetime.now(UTC),
            )
        except MailboxNotFound:
            return [tagged(command.tag, "NO", f"no mailbox {args.mailbox}", "TRYCREATE")]
        return await self.ok(command, "APPEND completed",
                             f"APPENDUID {result.uidvalidity} {result.uid}")

    async def do_IDLE(self, command: Command) -> Lines:
        await self.send([continuation("idling")])
        await self.send(await self.updates())
        reader = asyncio.ensure_future(self.next_event())
        try:
            while True:
                waiters: set[asyncio.Future[object]] = {reader}  # type: ignore[arg-type]
                feed_wait: asyncio.Future[int] | None = None
                if self.feed is not None:
                    feed_wait = asyncio.ensure_future(self.feed.get())
                    waiters.add(feed_wait)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if feed_wait is not None:
                    if feed_wait in done:
                        assert self.feed is not None
                        self.feed.put_nowait(feed_wait.result())  # let updates() see it
                    else:
                        feed_wait.cancel()
                if reader in done:
                    break
                await self.send(await self.updates())
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Closed):
                    await reader
        event = reader.result()
        if not isinstance(event, CommandBytes) or event.raw.strip().upper() != b"DONE":
            return [tagged(command.tag, "BAD", "expected DONE", "CLIENTBUG")]
        return await self.ok(command, "IDLE terminated")

    # selected -----------------------------------------------------------------------------

    @property
    def selected(self) -> View:
        assert self.view is not None
        return self.view

    async def do_CHECK(self, command: Command) -> Lines:
        return await self.ok(command, "CHECK completed")

    async def do_CLOSE(self, command: Command) -> Lines:
        view = self.selected
        if not view.readonly:
            deleted = [u for u in view.uids if "\\Deleted" in view.meta[u].flags]
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
        await self._refresh_now()
        args = command.args
        assert isinstance(args, Expunge)
        candidates = view.uids if args.sequence is None else view.resolve(args.sequence, True)
        deleted = [u for u in candidates if "\\Deleted" in view.meta[u].flags]
        if deleted:
            await self.store.expunge(self.me, view.mailbox_id, deleted)
        return await self.ok(command, "EXPUNGE completed", before=await self._refresh_now())

    async def _refresh_now(self, allow_expunge: bool = True) -> Lines:
        view = self.selected
        metas = await self.store.messages(self.me, view.mailbox_id)
        if self.feed is not None:
            while not self.feed.empty():
                self.feed.get_nowait()
        return view.refresh(metas, allow_expunge)

    async def do_SEARCH(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Search)
        view = self.selected
        before = await self._refresh_now(allow_expunge=command.uid)
        largest_uid = view.uids[-1] if view.uids else 0
        hits: list[int] = []
        needs_message = _needs_message(args.key)
        budget = Budget(self.config.command_cpu_budget)
        for seq, uid in enumerate(view.uids, start=1):
            budget.check()
            if seq % 64 == 0:
                await asyncio.sleep(0)  # let other sessions run between chunks of work
            meta = view.meta[uid]
            parsed: Part | None = None
            if needs_message:
                try:
                    parsed = ParsedMessage.from_bytes(
                        await self.store.body(view.mailbox_id, uid))
                except MailboxNotFound:
                    continue  # expunged meanwhile
            ctx = SearchContext(seq, meta, _constant(parsed), largest_seq=len(view.uids),
                                largest_uid=largest_uid)
            if matches(args.key, ctx):
                hits.append(uid if command.uid else seq)
        modseq = None
        if _uses_modseq(args.key) and hits:
            uids = hits if command.uid else [view.uids[s - 1] for s in hits]
            modseq = max(view.meta[u].modseq for u in uids)
        if args.return_options is not None:
            line = self._esearch(command, args.return_options, hits, modseq)
        else:
            values: list[object] = [Atom("SEARCH"), *hits]
            if modseq is not None:
                values.append([Atom("MODSEQ"), modseq])
            line = untagged(*values)
        return [*before, line, tagged(command.tag, "OK", "SEARCH completed")]

    def _esearch(self, command: Command, options: tuple[str, ...], hits: list[int],
                 modseq: int | None) -> bytes:
        wanted = set(options) or {"ALL"}
        parts = f'* ESEARCH (TAG "{command.tag}")' + (" UID" if command.uid else "")
        if hits and "MIN" in wanted:
            parts += f" MIN {min(hits)}"
        if hits and "MAX" in wanted:
            parts += f" MAX {max(hits)}"
        if "COUNT" in wanted:
            parts += f" COUNT {len(hits)}"
        if hits and "ALL" in wanted:
            parts += f" ALL {format_sequence_set(hits)}"
        if modseq is not None:
            parts += f" MODSEQ {modseq}"
        return parts.encode() + b"\r\n"

    async def do_FETCH(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Fetch)
        view = self.selected
        before = await self.updates(allow_expunge=command.uid)
        uids = view.resolve(args.sequence, command.uid)
        attrs = args.attrs
        with_modseq = args.changed_since is not None
        if with_modseq or any(a.name == "MODSEQ" for a in attrs):
            self.enabled.add("CONDSTORE")
            view.condstore = True
        if args.changed_since is not None:
            uids = [u for u in uids if view.meta[u].modseq > args.changed_since]
        if fetching.sets_seen(attrs) and not view.readonly:
            unseen = [u for u in uids if "\\Seen" not in view.meta[u].flags]
            if unseen:
                result = await self.store.store_flags(self.me, view.mailbox_id, unseen, "add",
                                                      ["\\Seen"])
                for change in result.changed:
                    old = view.meta[change.uid]
                    view.meta[change.uid] = type(old)(old.uid, old.guid, change.flags,
                                                      change.modseq, old.size, old.internaldate)
                if not any(a.name == "FLAGS" for a in attrs):
                    attrs = (*attrs, FetchAttr("FLAGS"))
        lines: Lines = list(before)
        for uid in uids:
            meta = view.meta[uid]
            try:
                items = await fetching.render(
                    attrs, meta, self._body_loader(view.mailbox_id, uid),
                    with_uid=command.uid, with_modseq=with_modseq,
                )
            except MailboxNotFound:
                continue  # expunged by another session meanwhile; RFC 2180 4.1.2
            except fetching.FetchError:
                continue
            lines.append(untagged(view.seq_of(uid), Atom("FETCH"), items))
            if len(lines) >= 64:
                await self.send(lines)
                lines = []
        return [*lines, tagged(command.tag, "OK", "FETCH completed")]

    def _body_loader(self, mailbox_id: int, uid: int) -> Callable[[], Awaitable[bytes]]:
        return lambda: self.store.body(mailbox_id, uid)

    async def do_STORE(self, command: Command) -> Lines:
        args = command.args
        assert isinstance(args, Store)
        view = self.selected
        if view.readonly:
            return [tagged(command.tag, "NO", "mailbox is read-only", "READ-ONLY")]
        before = await self.updates(allow_expunge=command.uid)
        uids = view.resolve(args.sequence, command.uid)
        if args.unchanged_since is not None:
            self.enabled.add("CONDSTORE")
            view.condstore = True
        result = await self.store.store_flags(self.me, view.mailbox_id, uids, args.mode,
                                              list(args.flags), args.unchanged_since)
        lines: Lines = list(before)
        changed = {c.uid for c in result.changed}
        for change in result.changed:
            old = view.meta[change.uid]
            view.meta[change.uid] = type(old)(old.uid, old.guid, change.flags, change.modseq,
                                              old.size, old.internaldate)
        for uid in uids:
            if args.silent and not (view.condstore and uid in changed):
                continue
            if uid in changed or not args.silent:
                if uid in result.failed_unchanged_since:
                    continue
                lines.append(view.flags_response(view.meta[uid], with_uid=command.uid))
        code = None
        if result.failed_unchanged_since:
            failed = result.failed_unchanged_since if command.uid else [
                view.seq_of(u) for u in result.failed_unchanged_since]
            code = f"MODIFIED {format_sequence_set(list(failed))}"
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


_MESSAGE_KEYS = {"BCC", "CC", "FROM", "TO", "SUBJECT", "HEADER", "BODY", "TEXT", "SENTBEFORE",
                 "SENTON", "SENTSINCE"}


def _needs_message(key: SearchKey) -> bool:
    return any(k.name in _MESSAGE_KEYS for k in _walk(key))


def _uses_modseq(key: SearchKey) -> bool:
    return any(k.name == "MODSEQ" for k in _walk(key))


