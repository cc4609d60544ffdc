"""The session object: the client's connection, the backend's, and the command loop.

Before login the gateway answers the client itself (`prelogin.py`). After it, every command is
framed by the shared codec and relayed to the backend one at a time (`relay.py`); a lost backend
is replaced without the client noticing (`failover.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from mailmux import metrics
from mailmux.gateway.config import GatewayConfig
from mailmux.gateway.connector import BackendSession, connect
from mailmux.gateway.errors import AuthenticationFailed, BackendLost, NoBackend
from mailmux.gateway.responses import Response, ResponseTooLarge, Spill, read_response
from mailmux.gateway.session import fastlane, prelogin
from mailmux.gateway.session import relay as relaying
from mailmux.gateway.session.heartbeat import Registration
from mailmux.gateway.session.lanerules import tag_and_name
from mailmux.gateway.session.pipeline import names_messages_by_number
from mailmux.gateway.session.states import Input, SessionState, step
from mailmux.gateway.session.view import MailboxView
from mailmux.inflated import read_inflated
from mailmux.protocol.imap.compress import CompressError, Deflater, Inflater
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.framing import (
    CommandBytes,
    CommandFramer,
    FramingError,
    LiteralContinue,
    NeedData,
)
from mailmux.protocol.imap.parser import parse_command
from mailmux.tcp import quickack

if TYPE_CHECKING:
    from mailmux.gateway.imap_proxy import ImapProxy

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
HOLD_MAX = 32 * 1024  # responses held back to leave together with the command's last one
# Before login the gateway cannot know the backends' lists: it offers what every mailmux node
# offers. After login the client sees the serving backend's list less DENIED, plus what the
# gateway answers itself.
BEFORE_LOGIN = (
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
    "UNSELECT", "CHILDREN", "SPECIAL-USE", "CONDSTORE", "ESEARCH", "BINARY",
    "MULTIAPPEND", "STATUS=SIZE", "SORT", "SORT=DISPLAY",
    "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "ESORT", "WITHIN",
    "UTF8=ACCEPT", "LIST-EXTENDED", "LIST-STATUS",
    "SEARCHRES", "CONTEXT=SEARCH", "CONTEXT=SORT", "QRESYNC",
    "CATENATE", "COMPRESS=DEFLATE", "NOTIFY",
)
GATEWAY_OWN = ("ID", "COMPRESS=DEFLATE")  # answered by the gateway itself
# Extensions a backend may offer that the gateway must not pass on, and why:
DENIED_PREFIXES = (
    "STARTTLS",  # TLS is between the client and the gateway, handled locally before login
    "LOGINDISABLED",  # login happens at the gateway, which always accepts it
    "AUTH=",  # authentication happens at the gateway (AUTH=PLAIN, offered before login)
    "COMPRESS=",  # node links stay plain; the gateway offers COMPRESS to clients itself
    "XREPLAY",  # the gateway's own replay ids (pool-internal), never the client's
    "UNAUTHENTICATE",  # would leave the gateway logged in with another user's failover state
)


def relayable(capability: str) -> bool:
    return not capability.upper().startswith(DENIED_PREFIXES)


UNAUTHENTICATED_MAX_LITERAL = 4 * 1024
UNAUTHENTICATED_MAX_COMMAND = 8 * 1024


class ClientGone(Exception):
    pass


class ClientSession:
    def __init__(self, proxy: ImapProxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.config: GatewayConfig = proxy.config
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.user: str | None = None
        self.started = time.monotonic()
        self.framer = self.new_framer()
        self.state = SessionState.CONNECTING
        self.backend: BackendSession | None = None
        self.password: str | None = None  # kept for failover logins; never logged
        self.enabled: list[bytes] = []  # ENABLE arguments, replayed after failover
        # NOTIFY SET in force ("NOTIFY SET ...\r\n", restored after failover): the backend
        # is read between commands too, and its events passed on as they come.
        self.notify: bytes | None = None
        self.inflater: Inflater | None = None  # COMPRESS=DEFLATE with the client is on
        self.deflater: Deflater | None = None
        self.pending: asyncio.Task[bytes] | None = None  # that read (of a first line)
        self.view: MailboxView | None = None
        self.tls = False
        self.idling = False
        self._tags = itertools.count(1)
        self._replays = itertools.count(1)
        self._token = secrets.token_hex(8)
        self.queued: deque[CommandBytes] = deque()
        self._held: list[bytes] = []  # responses waiting to leave with the next send
        self._held_size = 0
        self.watch: Registration | None = None
        self.watchdog = Watchdog()
        self.standby: BackendSession | None = None  # logged in on another node, kept ready
        self._standby_task: asyncio.Task[None] | None = None
        self.lane: fastlane.FastLane | None = None  # relays the steady state's small commands
        self.adopted: relaying.Relay | None = None  # the lane's command, handed to the loop

    def transition(self, event: Input) -> None:
        self.state = step(self.state, event)

    def attach(self, backend: BackendSession, user: str, password: str) -> None:
        """The first backend login succeeded: the session is serving."""
        self.user, self.password = user, password
        self.framer.max_literal = self.config.max_message_size
        self.framer.max_command = None
        self.proxy.guard.authenticated()
        self.lane = fastlane.install(self)
        self.use(backend)
        self.transition(Input.LOGGED_IN)

    def use(self, backend: BackendSession) -> None:
        """Serve from this backend from now on, with its node watched for hangs."""
        self.drop_pending()
        self.backend = backend
        if self.lane is not None:
            self.lane.follow(backend)
        if self.watch is not None:
            self.watch.cancel()
        self.watch = self.proxy.pool.heartbeat.register(
            backend.node_id, backend.candidate.control, backend.abort
        )

    def drop_pending(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None

    async def drop_backend(self) -> None:
        self.drop_pending()
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.backend is not None:
            backend, self.backend = self.backend, None
            await backend.close()

    # the standby: a second node logged in ahead of need, so failover skips discovery and login

    def want_standby(self) -> None:
        if (self.standby is not None and self.backend is not None
                and self.standby.node_id == self.backend.node_id):
            self.drop_standby()  # a standby on the serving node is no standby
        if self.backend is None or self.standby is not None or (
            self._standby_task is not None and not self._standby_task.done()
        ):
            return
        self._standby_task = asyncio.get_running_loop().create_task(
            self._prepare_standby(self.backend.node_id)
        )

    async def _prepare_standby(self, serving: str) -> None:
        assert self.user is not None and self.password is not None
        try:
            standby = await connect(
                self.proxy.pool, self.user, self.password, policy=self.config.selection,
                timeout=self.config.request_timeout, exclude=[serving], standby=True,
            )
        except (NoBackend, AuthenticationFailed, BackendLost) as exc:
            log.debug("imap %s (%s): no standby: %s", self.peer, self.user, exc)
            return
        if self.state is SessionState.CLOSED or self.standby is not None:
            await standby.close()
            return
        self.standby = standby

    def take_standby(self, excluded: list[str]) -> BackendSession | None:
        """The standby, if it is still worth trying (its node not excluded nor quarantined)."""
        standby, self.standby = self.standby, None
        if standby is None:
            return None
        if (standby.node_id in excluded or standby.reader.at_eof()
                or self.proxy.pool.health.is_quarantined(standby.node_id)):
            standby.writer.transport.abort()
            return None
        return standby

    def drop_standby(self) -> None:
        if self._standby_task is not None:
            self._standby_task.cancel()
        if self.standby is not None:
            self.standby.writer.transport.abort()
            self.standby = None

    def new_framer(self) -> CommandFramer:
        if self.user is None:
            # Before login a command is a LOGIN at most: a few KiB, never 50 MiB literals.
            return CommandFramer(max_line=self.config.max_line_length,
                                 max_literal=UNAUTHENTICATED_MAX_LITERAL,
                                 max_command=UNAUTHENTICATED_MAX_COMMAND)
        return CommandFramer(
            max_line=self.config.max_line_length, max_literal=self.config.max_message_size
        )

    def replay_id(self) -> str:
        """A replay id unique per gateway session and command (the pool's XREPLAY contract)."""
        return f"g{self._token}-{next(self._replays)}"

    def internal_tag(self) -> bytes:
        return b"gw%d" % next(self._tags)

    # the client's side ------------------------------------------------------------------

    def hold(self, data: bytes) -> bool:
        """Keep a response to go out with the next `send` (one write, one segment, for a
        command's untagged responses and its tagged answer); False when enough is held already
        and the caller must send."""
        if self._held_size + len(data) > HOLD_MAX:
            return False
        self._held.append(data)
        self._held_size += len(data)
        return True

    async def send(self, data: bytes) -> None:
        """Write to the client. Its failure is the client's: it ends this session, nothing else."""
        if self._held:
            self._held.append(data)
            data = b"".join(self._held)
            self._held, self._held_size = [], 0
        try:
            if self.writer.transport.is_closing():
                # asyncio drops such a write in silence, uvloop raises RuntimeError
                raise ConnectionResetError("the connection is closed")
            self.writer.write(self.deflater.compress(data) if self.deflater else data)
            if self.writer.transport.get_write_buffer_size():
                await self.writer.drain()  # only a slow client makes us wait
        except OSError as exc:
            raise ClientGone(f"writing to the client: {exc!r}") from exc

    async def _recv(self) -> bytes:
        """Client bytes, decompressed a bounded piece at a time when COMPRESS is on (so the
        framer's caps meet a decompression bomb piece by piece). Takes nothing from the
        socket if cancelled while waiting."""
        inflater = self.inflater
        if inflater is None:
            return await self.reader.read(READ_SIZE)
        try:
            return await read_inflated(self.reader, inflater, READ_SIZE)
        except CompressError as exc:
            raise ClientGone(str(exc)) from None

    def pipelined_by_number(self) -> bool:
        """Whether the client has sent, behind the command in flight, a command that names
        messages by number (`pipeline.py`): then no EXPUNGE may reach it yet."""
        if any(names_messages_by_number(c.raw) for c in self.queued):
            return True
        # What the stream has read from the socket but nobody has taken yet.
        unread = bytes(getattr(self.reader, "_buffer", b""))
        if unread and self.inflater is not None:
            return True  # compressed: cannot look inside, so assume the worst
        return names_messages_by_number(self.framer.peek_buffered() + unread)

    async def compress(self, tag: bytes, raw: bytes) -> bool:
        """COMPRESS DEFLATE (RFC 4978) between the client and the gateway; the gateway still
        frames the plain commands, and its links to nodes stay as they are."""
        words = raw.split()
        if len(words) != 3 or words[2].upper() != b"DEFLATE":
            await self.send(tag + b" BAD [CLIENTBUG] COMPRESS DEFLATE is the one mechanism\r\n")
        elif self.deflater is not None:
            await self.send(tag + b" NO [COMPRESSIONACTIVE] already compressing\r\n")
        else:
            await self.send(tag + b" OK DEFLATE active\r\n")
            self.deflater, self.inflater = Deflater(), Inflater()
            self.inflater.feed(self.framer.take_buffered())
        return True

    async def next_client_event(self, events: bool = False) -> CommandBytes | FramingError:
        """The client's next command; with `events` (between commands, NOTIFY on), what the
        backend says meanwhile is passed on as it comes."""
        if self.queued:
            return self.queued.popleft()
        incomplete = False
        while True:
            event = self.framer.next_event()
            if isinstance(event, NeedData):
                if incomplete:
                    # Part of a command (a literal without its CRLF): no answer will carry
                    # our ACK soon, so ACK now. A whole command's answer carries it.
                    quickack(self.writer)
                deadline = self._login_deadline()
                try:
                    if deadline is None:  # logged in: no deadline, nothing to set up
                        data = await self._read_steady(events)
                    else:
                        async with asyncio.timeout(deadline):
                            data = await self._read(events)
                except TimeoutError:
                    with contextlib.suppress(OSError):
                        await self.send(b"* BYE login timeout\r\n")
                    raise ClientGone("login timeout") from None
                except OSError as exc:
                    raise ClientGone(f"reading from the client: {exc!r}") from exc
                if not data:
                    raise ClientGone("the client closed the connection")
                self.framer.receive_data(data)
                incomplete = True
                if self.inflater is not None and self.inflater.pending:
                    await asyncio.sleep(0)  # a long expansion still lets others run
                continue
            if isinstance(event, LiteralContinue):
                await self.send(b"+ Ready for literal data\r\n")
                continue
            return event

    async def _read_steady(self, events: bool) -> bytes:
        lane = self.lane
        if lane is None or not self.steady():
            return await self._read(events)
        lane.open = True  # commands may now pass by the lane until it hands bytes to us
        try:
            return await self._read(events)
        finally:
            lane.open = False
            if lane.line:
                lane.drop()  # cancelled: the session is being torn down

    def steady(self) -> bool:
        """Nothing going on that the fast lane does not know how to keep."""
        view = self.view
        return (self.backend is not None and self.inflater is None and self.deflater is None
                and not self.queued and self.notify is None and not self.idling
                and self.pending is None and self.adopted is None
                and not self.framer.in_command and not fastlane.buffered(self.reader)
                and (view is None or not (view.pending or view.confused)))

    def adopt(self, tag: bytes) -> relaying.Relay | None:
        """The Relay of the command the fast lane sent and handed over, if this is it."""
        adopted, self.adopted = self.adopted, None
        if adopted is not None and adopted.tag != tag:
            log.error("imap %s (%s): the fast lane handed over %r, the loop read %r",
                      self.peer, self.user, adopted.tag, tag)
            return None
        return adopted

    def _read(self, events: bool) -> Awaitable[bytes]:
        if events and self.notify is not None and self.backend is not None \
                and not self.framer.in_command:
            return self._read_relaying_events()
        return self._recv()  # the usual case: no task, no second waiter

    async def _read_relaying_events(self) -> bytes:
        read = asyncio.ensure_future(self._recv())
        try:
            while self.notify is not None and self.backend is not None \
                    and not self.framer.in_command:
                if self.pending is None:
                    self.pending = asyncio.ensure_future(self.backend.reader.readuntil(b"\n"))
                pending = self.pending
                await asyncio.wait({read, pending}, return_when=asyncio.FIRST_COMPLETED)
                if read.done() and not pending.done():
                    break
                self.pending = None
                if not await self._relay_event(pending):
                    break
            return await read
        finally:
            if not read.done():
                read.cancel()  # a read waiting for data has taken none: nothing is lost

    async def _relay_event(self, done: asyncio.Task[bytes]) -> bool:
        """Pass on one unsolicited response; False when the backend is gone (the next
        command fails over and restores NOTIFY)."""
        backend = self.backend
        assert backend is not None
        try:
            response = await read_response(backend.reader, self.config.max_message_size,
                                           first=done.result())
        except asyncio.LimitOverrunError:
            response = await read_response(backend.reader, self.config.max_message_size)
        except (ConnectionError, asyncio.IncompleteReadError, ResponseTooLarge) as exc:
            log.info("imap %s (%s): backend lost between commands: %r", self.peer, self.user,
                     exc)
            backend.abort(f"lost between commands: {exc!r}")
            return False
        if self.watch is not None:
            self.watch.heard()
        if response.raw.startswith(b"* BYE") or not response.raw.startswith(b"* "):
            log.warning("imap %s (%s): unexpected between commands: %r", self.peer,
                        self.user, response.raw[:80])
            backend.abort("unexpected response between commands")
            return False
        if self.view is not None:
            self.view.observe(response)
        await self.send(response.raw)
        if self.view is not None and self.view.unknown():
            # new mail told by EXISTS: learn its UIDs now, while no command is in flight
            await relaying.learn_uids(self, self.view)
        return True

    async def _pending_line(self) -> bytes | None:
        """The first line the read begun between commands took, if it took one; a read
        still waiting is cancelled, which takes nothing from the stream."""
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        if not pending.done():
            pending.cancel()
            await asyncio.wait({pending})
        if pending.cancelled() or isinstance(pending.exception(), asyncio.LimitOverrunError):
            return None
        return pending.result()

    def _login_deadline(self) -> float | None:
        if self.user is not None:
            return None
        return max(0.0, self.started + self.config.login_timeout - time.monotonic())

    def capabilities(self) -> str:
        if self.backend is not None:
            offered = [c for c in sorted(self.backend.capabilities)
                       if relayable(c) and c != "IMAP4REV1"]
            own = [c for c in GATEWAY_OWN if c not in offered]
            return " ".join(["IMAP4rev1", *offered, *own])
        caps = list(BEFORE_LOGIN)
        if not self.tls and self.proxy.tls_context is not None:
            caps.append("STARTTLS")
        caps.append("AUTH=PLAIN")
        return " ".join(caps)

    # the backend's side -----------------------------------------------------------------

    async def read_backend(self, backend: BackendSession, spill: Spill | None = None) -> Response:
        """One whole response. The deadline measures silence: arriving bytes push it back,
        and it stops while a slow client takes a streamed piece of a large response."""
        try:
            first = await self._pending_line()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise BackendLost(backend.lost or f"{backend.node_id}: {exc!r}") from exc
        dog = self.watchdog
        dog.waiting(backend, self.response_timeout(), self.watch, spill)
        try:
            return await read_response(backend.reader, self.config.max_message_size,
                                       dog.heard, dog.spill if spill is not None else None,
                                       first)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if dog.expired is backend:
                raise BackendLost(f"{backend.node_id} did not answer in time") from exc
            raise BackendLost(backend.lost or f"{backend.node_id}: {exc!r}") from exc
        finally:
            dog.done()

    async def write_backend(self, backend: BackendSession, data: bytes) -> None:
        watch = self.watch
        await backend.send(data, self.config.request_timeout,
                           watch.heard if watch is not None else None)

    def response_timeout(self) -> float | None:
        # IDLE waits for the user, not for the backend: measured by progress elsewhere.
        return None if self.idling else self.config.request_timeout

    # main loop --------------------------------------------------------------------------

    async def run(self) -> None:
        await self.send(f"* OK [CAPABILITY {self.capabilities()}] mailmux gateway ready\r\n"
                        .encode())
        try:
            while True:
                event = await self.next_client_event(events=True)
                if isinstance(event, FramingError):
                    await self.framing_error(event)
                    continue
                if not await self.command(event.raw):
                    return
        except ClientGone as exc:
            log.info("imap %s (%s): client gone: %s", self.peer, self.user, exc)
            self.transition(Input.CLIENT_GONE)
            return
        finally:
            if self.lane is not None:
                self.lane.drop()
            self.watchdog.stop()
            self.drop_standby()
            await self.drop_backend()

    async def framing_error(self, error: FramingError) -> None:
        code = f"[{error.code}] " if error.code else ""
        tag = error.tag or "*"
        status = "NO" if error.code == "TOOBIG" and error.tag else "BAD"
        await self.send(f"{tag} {status} {code}{error.message}\r\n".encode())
        if error.fatal:
            raise ClientGone()

    async def command(self, raw: bytes) -> bool:
        """Handle one client command; False when the session is over."""
        if self.backend is not None:
            # Relayed commands need only their tag and name; the backend parses the rest.
            tag, name = tag_and_name(raw)
            if tag is not None and name == "XREPLAY":
                # Replay ids are the gateway's own: a client's would let it claim the effect of
                # another of its commands.
                await self.send(tag + b" BAD [CLIENTBUG] unknown command XREPLAY\r\n")
                return True
            if tag is not None and name == "COMPRESS":
                return await self.compress(tag, raw)
            if tag is not None and (name == "NOOP" or name not in prelogin.LOCAL_BEFORE_LOGIN):
                return await self.relay(tag, raw, name)  # NOOP: relayed as local() would
        try:
            command = parse_command(raw)
        except ParseError as exc:
            if self.backend is None or exc.tag is None:
                code = f"[{exc.code}] " if exc.code else ""
                await self.send(f"{exc.tag or '*'} BAD {code}{exc.message}\r\n".encode())
                return True
            # The backend may know a command our parser does not: let it answer.
            return await self.relay(exc.tag.encode(), raw, "")
        if command.name in prelogin.LOCAL_BEFORE_LOGIN:
            return await prelogin.local(self, command)
        if self.backend is None:
            await self.send(f"{command.tag} BAD [CLIENTBUG] log in first\r\n".encode())
            return True
        return await self.relay(command.tag.encode(), raw, command.name)

    async def relay(self, tag: bytes, raw: bytes, name: str) -> bool:
        started = time.monotonic()
        going_on = await relaying.relay(self, tag, raw, name)
        metrics.observe_command(name, time.monotonic() - started)
        if not going_on and self.state is not SessionState.CLOSED:
            self.transition(Input.LOGOUT)
        return going_on

    async def bye(self, reason: str) -> bool:
        log.warning("imap %s (%s): ending the session: %s", self.peer, self.user, reason)
        self.transition(Input.VIEW_LOST)
        with contextlib.suppress(ClientGone):
            await self.send(b"* BYE [UNAVAILABLE] mail server unavailable, please reconnect\r\n")
        return False


class Watchdog:
    """Ends a backend link that was silent for `request_timeout` while a response was awaited.

    Per session, not per response: a read only notes the time and the link it waits on; one
    timer, when it fires, looks whether bytes came since and sets itself again if so (a timer,
    or an asyncio.timeout, per response cost more than relaying a small response). Expiry
    aborts the link, which fails the read under way; `expired` tells the reader why."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.backend: BackendSession | None = None  # the link a read waits on, if any
        self.expired: BackendSession | None = None
        self.timeout: float | None = None
        self.last = 0.0
        self.paused = False  # a slow client takes a piece: its time is not the backend's
        self.watch: Registration | None = None
        self.spill_to: Spill | None = None
        self.timer: asyncio.TimerHandle | None = None

    def waiting(self, backend: BackendSession, timeout: float | None,
                watch: Registration | None, spill: Spill | None) -> None:
        self.backend, self.timeout, self.watch, self.spill_to = backend, timeout, watch, spill
        self.last = self.loop.time()
        if self.timer is None and timeout is not None:
            self.timer = self.loop.call_at(self.last + timeout, self._check)

    def heard(self) -> None:
        self.last = self.loop.time()
        if self.watch is not None:
            self.watch.heard()  # the node is alive: the heartbeat need not ask

    async def spill(self, data: bytes) -> None:
        assert self.spill_to is not None
        self.paused = True
        try:
            await self.spill_to(data)
        finally:
            self.paused = False
        self.heard()

    def done(self) -> None:
        self.backend = self.spill_to = None

    def stop(self) -> None:
        self.done()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check(self) -> None:
        self.timer = None
        backend, timeout = self.backend, self.timeout
        if backend is None or timeout is None:
            return  # no read waits (or IDLE waits for the user): the next read sets it again
        now = self.loop.time()
        if self.paused:
            self.last = now
        due = self.last + timeout
        if due > now:
            self.timer = self.loop.call_at(due, self._check)
            return
        self.expired = backend
        backend.writer.transport.abort()  # the read under way fails: BackendLost
