"""The client-facing IMAP server of the gateway: local login, then a relay with failover.

Before login the gateway answers CAPABILITY, ID, NOOP, LOGOUT, STARTTLS, LOGIN and
AUTHENTICATE PLAIN itself; a login runs discovery, selection and "connect with retry"
(`connector.py`). After it, every command is framed by the shared codec and relayed to the
backend one at a time, so the gateway always knows which command is in flight, the selected
mailbox, and what the client has ENABLEd.

Failover (patent S31-S41): if the backend connection fails, or a response does not start
arriving within `request_timeout`, the gateway logs in to another candidate, restores ENABLE and
the selected mailbox, checks that the client's view still holds (same UIDVALIDITY, no message
the client knows of is missing), and re-sends the command; the client sees nothing. When the view
cannot be kept the session ends with `* BYE [UNAVAILABLE]` so the client resynchronises: it is
never answered with a different message than the one it meant.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import ssl
from collections import deque
from dataclasses import dataclass

from mailmux.gateway.config import GatewayConfig
from mailmux.gateway.connector import BackendSession, connect
from mailmux.gateway.errors import AuthenticationFailed, BackendLost, NoBackend
from mailmux.gateway.literals import non_synchronising
from mailmux.gateway.pool import Pool
from mailmux.gateway.responses import Response, ResponseTooLarge, read_response
from mailmux.protocol.imap.commands import Authenticate, Command, Login
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

log = logging.getLogger(__name__)

Address = tuple[str, int]
READ_SIZE = 64 * 1024
MAX_FAILOVERS = 3
# What the gateway can relay faithfully; the client sees this intersected with the backend's.
RELAYABLE = (
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
    "UNSELECT", "CHILDREN", "SPECIAL-USE", "CONDSTORE",
)
LOCAL_BEFORE_LOGIN = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "LOGIN", "AUTHENTICATE", "ID"}


class ClientGone(Exception):
    pass


class ViewLost(Exception):
    """After failover the new backend cannot show the client the mailbox it was looking at."""


@dataclass
class MailboxView:
    """What the client has been told about the selected mailbox."""

    select: bytes  # the SELECT/EXAMINE command as the client sent it, tag excluded
    uidvalidity: int | None = None
    uidnext: int | None = None
    exists: int = 0

    def observe(self, response: Response) -> None:
        if not response.raw.startswith(b"* "):
            return
        if (n := response.exists) is not None:
            self.exists = n
        elif response.expunge is not None:
            self.exists = max(0, self.exists - 1)
        elif (v := response.uidvalidity) is not None:
            self.uidvalidity = v
        elif (u := response.uidnext) is not None:
            self.uidnext = u


@dataclass
class Relay:
    """One command in flight: whether responses were already passed to the client."""

    tag: bytes
    raw: bytes
    name: str
    continued: bool = False  # a continuation was forwarded (IDLE is waiting for DONE)
    done_sent: bool = False
    forwarded: int = 0
    final: Response | None = None
    view: MailboxView | None = None  # SELECT/EXAMINE: the view being opened


class ClientSession:
    def __init__(self, proxy: ImapProxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.config = proxy.config
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.framer = CommandFramer(
            max_line=self.config.max_line_length, max_literal=self.config.max_message_size
        )
        self.backend: BackendSession | None = None
        self.user: str | None = None
        self._password: str | None = None  # kept for failover logins; never logged
        self.enabled: list[bytes] = []  # ENABLE arguments, replayed after failover
        self.view: MailboxView | None = None
        self.tls = False
        self._tags = itertools.count(1)
        self._queued: deque[CommandBytes] = deque()

    # plumbing ---------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_client_event(self) -> CommandBytes | FramingError:
        if self._queued:
            return self._queued.popleft()
        while True:
            event = self.framer.next_event()
            if isinstance(event, NeedData):
                data = await self.reader.read(READ_SIZE)
                if not data:
                    raise ClientGone()
                self.framer.receive_data(data)
                quickack(self.writer)
                continue
            if isinstance(event, LiteralContinue):
                await self.send(b"+ Ready for literal data\r\n")
                continue
            return event

    def capabilities(self) -> str:
        caps = list(RELAYABLE)
        if self.backend is not None:
            offered = self.backend.capabilities
            caps = [c for c in caps if c.upper() in offered]
        elif not self.tls and self.proxy.tls_context is not None:
            caps.append("STARTTLS")
        if self.backend is None:
            caps.append("AUTH=PLAIN")
        return " ".join(caps)

    # main loop --------------------------------------------------------------------------

    async def run(self) -> None:
        await self.send(f"* OK [CAPABILITY {self.capabilities()}] mailmux gateway ready\r\n"
                        .encode())
        try:
            while True:
                event = await self.next_client_event()
                if isinstance(event, FramingError):
                    await self.framing_error(event)
                    continue
                if not await self.command(event.raw):
                    return
        except (ClientGone, ConnectionError):
            return
        finally:
            if self.backend is not None:
                await self.backend.close()

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
            tag, name = _tag_and_name(raw)
            if tag is not None and name not in LOCAL_BEFORE_LOGIN:
                return await self.relay(tag, raw, name)
        try:
            command = parse_command(raw)
        except ParseError as exc:
            if self.backend is None or exc.tag is None:
                code = f"[{exc.code}] " if exc.code else ""
                await self.send(f"{exc.tag or '*'} BAD {code}{exc.message}\r\n".encode())
                return True
            # The backend may know a command our parser does not: let it answer.
            return await self.relay(exc.tag.encode(), raw, "")
        if command.name in LOCAL_BEFORE_LOGIN:
            return await self.local(command)
        if self.backend is None:
            await self.send(f"{command.tag} BAD [CLIENTBUG] log in first\r\n".encode())
            return True
        return await self.relay(command.tag.encode(), raw, command.name)

    # commands the gateway answers itself ------------------------------------------------

    async def local(self, command: Command) -> bool:
        tag = command.tag
        if command.name == "CAPABILITY":
            await self.send(f"* CAPABILITY {self.capabilities()}\r\n{tag} OK CAPABILITY done\r\n"
                            .encode())
        elif command.name == "NOOP":
            if self.backend is not None:
                return await self.relay(tag.encode(), command.raw, "NOOP")
            await self.send(f"{tag} OK NOOP done\r\n".encode())
        elif command.name == "ID":
            await self.send(f'* ID ("name" "mailmux-gateway")\r\n{tag} OK ID done\r\n'.encode())
        elif command.name == "LOGOUT":
            await self.send(f"* BYE mailmux gateway logging out\r\n{tag} OK LOGOUT done\r\n"
                            .encode())
            return False
        elif command.name == "STARTTLS":
            await self.starttls(tag)
        elif command.name == "LOGIN":
            assert isinstance(command.args, Login)
            await self.login(tag, command.args.user, command.args.password)
        else:
            assert isinstance(command.args, Authenticate)
            await self.authenticate(tag, command.args)
        return True

    async def starttls(self, tag: str) -> None:
        context = self.proxy.tls_context
        if context is None or self.tls or self.backend is not None:
            await self.send(f"{tag} BAD [CLIENTBUG] STARTTLS not available now\r\n".encode())
            return
        await self.send(f"{tag} OK begin TLS negotiation\r\n".encode())
        await self.writer.start_tls(context)
        self.tls = True
        self.framer = CommandFramer(
            max_line=self.config.max_line_length, max_literal=self.config.max_message_size
        )

    async def authenticate(self, tag: str, args: Authenticate) -> None:
        if self.backend is not None:
            await self.send(f"{tag} BAD [CLIENTBUG] already authenticated\r\n".encode())
            return
        if args.mechanism != "PLAIN":
            await self.send(f"{tag} NO [CANNOT] only AUTHENTICATE PLAIN is offered\r\n".encode())
            return
        blob = args.initial
        if blob is None:
            await self.send(b"+ \r\n")
            event = await self.next_client_event()
            line = event.raw.strip() if isinstance(event, CommandBytes) else b"*"
            if line == b"*":
                await self.send(f"{tag} BAD authentication cancelled\r\n".encode())
                return
            try:
                blob = base64.b64decode(line, validate=True)
            except binascii.Error:
                await self.send(f"{tag} BAD [CLIENTBUG] invalid base64\r\n".encode())
                return
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await self.send(f"{tag} BAD [CLIENTBUG] malformed PLAIN response\r\n".encode())
            return
        try:
            user, password = parts[1].decode(), parts[2].decode()
        except UnicodeDecodeError:
            await self.send(f"{tag} BAD [CLIENTBUG] credentials must be UTF-8\r\n".encode())
            return
        await self.login(tag, user, password)

    async def login(self, tag: str, user: str, password: str) -> None:
        if self.backend is not None:
            await self.send(f"{tag} BAD [CLIENTBUG] already authenticated\r\n".encode())
            return
        try:
            self.backend = await connect(
                self.proxy.pool, user, password,
                policy=self.config.selection, timeout=self.config.request_timeout,
            )
        except AuthenticationFailed:
            log.info("imap %s: login of %s refused", self.peer, user)
            await self.send(f"{tag} NO [AUTHENTICATIONFAILED] invalid credentials\r\n".encode())
            return
        except NoBackend as exc:
            log.warning("imap %s: login of %s impossible: %s", self.peer, user, exc)
            await self.send(f"{tag} NO [UNAVAILABLE] no mail server is available\r\n".encode())
            return
        self.user, self._password = user, password
        await self.send(f"{tag} OK [CAPABILITY {self.capabilities()}] logged in\r\n".encode())

    # relaying ---------------------------------------------------------------------------

    async def relay(self, tag: bytes, raw: bytes, name: str) -> bool:
        relay = Relay(tag=tag, raw=non_synchronising(raw), name=name)
        if name in ("SELECT", "EXAMINE"):
            relay.view = MailboxView(select=relay.raw.split(b" ", 1)[1])
        for attempt in itertools.count():
            try:
                if relay.name == "IDLE" and relay.done_sent:
                    # The client ended IDLE before the old backend answered: nothing to replay.
                    await self.send(tag + b" OK IDLE terminated\r\n")
                    break
                await self.exchange(relay)
                break
            except (BackendLost, OSError, asyncio.IncompleteReadError, ResponseTooLarge) as exc:
                if attempt >= MAX_FAILOVERS:
                    return await self.bye(f"backend failed {attempt + 1} times: {exc}")
                try:
                    await self.failover(relay, exc)
                except (NoBackend, ViewLost, AuthenticationFailed) as lost:
                    return await self.bye(str(lost))
        self.remember(relay)
        return name != "LOGOUT"

    async def exchange(self, relay: Relay) -> None:
        backend = self.backend
        assert backend is not None
        backend.writer.write(relay.raw)
        await backend.writer.drain()
        # Fast path: nothing to read from the client until the backend asks for a continuation.
        while not relay.continued:
            if await self.forward(relay, await self.read_backend(backend)):
                return
        if relay.done_sent:
            while not await self.forward(relay, await self.read_backend(backend)):
                pass
            return
        reader = asyncio.ensure_future(self.read_backend(backend))
        client: asyncio.Future[CommandBytes | FramingError] | None = None
        try:
            while True:
                waiting: set[asyncio.Future[object]] = {reader}  # type: ignore[arg-type]
                if relay.continued and not relay.done_sent:
                    client = client or asyncio.ensure_future(self.next_client_event())
                    waiting.add(client)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if client is not None and client in done:
                    event = client.result()
                    client = None
                    if isinstance(event, CommandBytes):
                        backend.writer.write(event.raw)  # IDLE's DONE
                        await backend.writer.drain()
                        relay.done_sent = True
                    continue
                response = reader.result()
                reader = asyncio.ensure_future(self.read_backend(backend))
                if await self.forward(relay, response):
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if client is not None:
                # A command the client pipelined while we waited: keep it for later.
                if client.done() and not client.cancelled() and client.exception() is None:
                    result = client.result()
                    if isinstance(result, CommandBytes):
                        self._queued.append(result)
                else:
                    client.cancel()

    async def read_backend(self, backend: BackendSession) -> Response:
        try:
            async with asyncio.timeout(self.response_timeout()):
                return await read_response(backend.reader, self.config.max_message_size)
        except TimeoutError as exc:
            raise BackendLost(f"{backend.candidate.node_id} did not answer in time") from exc
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise BackendLost(f"{backend.candidate.node_id}: {exc!r}") from exc

    def response_timeout(self) -> float | None:
        # IDLE waits for the user, not for the backend: measured by progress elsewhere.
        return None if self._idling else self.config.request_timeout

    _idling = False

    async def forward(self, relay: Relay, response: Response) -> bool:
        """Pass one response to the client; True when it was the command's tagged answer."""
        if response.is_continuation:
            if relay.continued:
                return False  # the replayed IDLE's "+": the client already has one
            relay.continued = True
            self._idling = relay.name == "IDLE"
        elif response.raw.startswith(b"* BYE"):
            if relay.name == "LOGOUT":
                await self.send(response.raw)
                return False
            raise BackendLost(f"backend said {response.raw[:80]!r}")
        view = relay.view or self.view
        if view is not None:
            view.observe(response)
        if response.tagged_as(relay.tag):
            self._idling = False
            relay.final = response
        relay.forwarded += 1
        await self.send(response.raw)
        return relay.final is not None

    def remember(self, relay: Relay) -> None:
        """Session state the gateway must restore after a failover."""
        ok = relay.final is not None and relay.final.status == b"OK"
        if relay.name in ("SELECT", "EXAMINE"):
            self.view = relay.view if ok else None  # a failed SELECT leaves nothing selected
        elif not ok:
            return
        elif relay.name in ("CLOSE", "UNSELECT"):
            self.view = None
        elif relay.name == "ENABLE":
            self.enabled.append(relay.raw.split(b" ", 1)[1])  # "ENABLE ...\r\n"

    async def bye(self, reason: str) -> bool:
        log.warning("imap %s (%s): ending the session: %s", self.peer, self.user, reason)
        with contextlib.suppress(ConnectionError):
            await self.send(b"* BYE [UNAVAILABLE] mail server unavailable, please reconnect\r\n")
        return False

    # failover ---------------------------------------------------------------------------

    async def failover(self, relay: Relay, cause: BaseException) -> None:
        old = self.backend
        assert old is not None and self.user is not None and self._password is not None
        node = old.candidate.node_id
        log.warning("imap %s (%s): backend %s lost during %s (%s); failing over",
                    self.peer, self.user, node, relay.name or "command", cause)
        self.proxy.pool.failed(node, str(cause))
        await old.close()
        self.backend = None
        self.backend = await connect(
            self.proxy.pool, self.user, self._password,
            policy=self.config.selection, timeout=self.config.request_timeout, exclude=[node],
        )
        for enable in self.enabled:
            await self.internal(enable)
        if self.view is not None:
            await self.restore_view(self.view)
        if relay.view is not None:
            relay.view = MailboxView(select=relay.view.select)
        log.info("imap %s (%s): now on %s", self.peer, self.user,
                 self.backend.candidate.node_id)

    async def internal(self, command: bytes) -> list[Response]:
        """Run a command of the gateway's own on the backend; its responses stay here."""
        backend = self.backend
        assert backend is not None
        tag = b"gw%d" % next(self._tags)
        backend.writer.write(tag + b" " + command)
        await backend.writer.drain()
        responses = []
        while True:
            response = await self.read_backend(backend)
            responses.append(response)
            if response.tagged_as(tag):
                if response.status != b"OK":
                    raise ViewLost(f"{command[:40]!r} failed on the new backend: "
                                   f"{response.raw[:80]!r}")
                return responses

    async def restore_view(self, view: MailboxView) -> None:
        fresh = MailboxView(select=view.select)
        for response in await self.internal(view.select):
            fresh.observe(response)
        if fresh.uidvalidity != view.uidvalidity:
            raise ViewLost(f"UIDVALIDITY changed ({view.uidvalidity} → {fresh.uidvalidity})")
        if fresh.exists < view.exists:
            raise ViewLost(f"the replica lacks messages ({fresh.exists} < {view.exists})")
        if fresh.exists > view.exists:
            await self.send(b"* %d EXISTS\r\n" % fresh.exists)  # new mail: allowed any time
            view.exists = fresh.exists


def _tag_and_name(raw: bytes) -> tuple[bytes | None, str]:
    """(tag, upper-case command name; "FETCH" for "UID FETCH") from a command's first line."""
    first = raw[: raw.find(b"\n") + 1 or len(raw)].split(None, 3)
    if len(first) < 2:
        return None, ""
    name = first[1].upper()
    if name == b"UID" and len(first) > 2:
        name = first[2].upper()
    return first[0], name.decode("ascii", "replace")


class ImapProxy:
    def __init__(self, config: GatewayConfig, pool: Pool,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.pool = pool
        self.tls_context = tls_context
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> Address:
        self._server = await asyncio.start_server(self._serve, *self.config.listen_imap)
        bound: Address = self._server.sockets[0].getsockname()[:2]
        log.info("imap listening on %s:%d", *bound)
        return bound

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        session = ClientSession(self, reader, writer)
        try:
            await session.run()
        except Exception:
            log.exception("imap %s: session failed", session.peer)
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
