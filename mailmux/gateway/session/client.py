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
import time
from collections import deque
from typing import TYPE_CHECKING

from mailmux import metrics
from mailmux.gateway.config import GatewayConfig
from mailmux.gateway.connector import BackendSession
from mailmux.gateway.errors import BackendLost
from mailmux.gateway.responses import Response, read_response
from mailmux.gateway.session import prelogin
from mailmux.gateway.session import relay as relaying
from mailmux.gateway.session.states import Input, SessionState, step
from mailmux.gateway.session.view import MailboxView
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
# What the gateway can relay faithfully; the client sees this intersected with the backend's.
RELAYABLE = (
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
    "UNSELECT", "CHILDREN", "SPECIAL-USE", "CONDSTORE",
)


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
        self.framer = self.new_framer()
        self.state = SessionState.CONNECTING
        self.backend: BackendSession | None = None
        self.user: str | None = None
        self.password: str | None = None  # kept for failover logins; never logged
        self.enabled: list[bytes] = []  # ENABLE arguments, replayed after failover
        self.view: MailboxView | None = None
        self.tls = False
        self.idling = False
        self._tags = itertools.count(1)
        self.queued: deque[CommandBytes] = deque()

    def transition(self, event: Input) -> None:
        self.state = step(self.state, event)

    def attach(self, backend: BackendSession, user: str, password: str) -> None:
        """The first backend login succeeded: the session is serving."""
        self.backend, self.user, self.password = backend, user, password
        self.transition(Input.LOGGED_IN)

    def new_framer(self) -> CommandFramer:
        return CommandFramer(
            max_line=self.config.max_line_length, max_literal=self.config.max_message_size
        )

    def internal_tag(self) -> bytes:
        return b"gw%d" % next(self._tags)

    # the client's side ------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_client_event(self) -> CommandBytes | FramingError:
        if self.queued:
            return self.queued.popleft()
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

    # the backend's side -----------------------------------------------------------------

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
        return None if self.idling else self.config.request_timeout

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
            self.transition(Input.CLIENT_GONE)
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
            if tag is not None and name not in prelogin.LOCAL_BEFORE_LOGIN:
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
        with contextlib.suppress(ConnectionError):
            await self.send(b"* BYE [UNAVAILABLE] mail server unavailable, please reconnect\r\n")
        return False


def _tag_and_name(raw: bytes) -> tuple[bytes | None, str]:
    """(tag, upper-case command name; "FETCH" for "UID FETCH") from a command's first line."""
    first = raw[: raw.find(b"\n") + 1 or len(raw)].split(None, 3)
    if len(first) < 2:
        return None, ""
    name = first[1].upper()
    if name == b"UID" and len(first) > 2:
        name = first[2].upper()
    return first[0], name.decode("ascii", "replace")
