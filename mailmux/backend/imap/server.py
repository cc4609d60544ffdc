"""The node's IMAP listener: accepts connections, enforces connection limits, runs sessions.

Strangers share `max_unauthenticated` slots. A pool gateway's links must not compete with them:
a link that proves it is a gateway's (XGATEWAY, protocol/imap/gatewaylink.py) moves to a budget
of its own (`max_gateway_links`). With the stranger slots full, a new connection is not refused
at once: it has `LINK_PROOF_TIMEOUT` to send that proof as its first line (a gateway sends it
before the greeting), in at most `max_unauthenticated` such trial slots; anything else gets
`* BYE [UNAVAILABLE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

from mailmux import metrics
from mailmux.backend.config import BackendConfig
from mailmux.backend.gatewaykeys import GatewayKeys
from mailmux.backend.imap.recent import RecentClaims
from mailmux.backend.imap.session import Closed, Session
from mailmux.backend.load import LoadMeter
from mailmux.backend.login_failures import PoolLoginFailures
from mailmux.backend.store.interface import MailStore
from mailmux.protocol.control.errors import ControlAuthError
from mailmux.protocol.control.replay import ReplayCache
from mailmux.protocol.imap import gatewaylink
from mailmux.protocol.imap.response import untagged_status
from mailmux.tls import server_context

log = logging.getLogger(__name__)

Address = tuple[str, int]
CLOSE_GRACE = 2.0
LINK_PROOF_TIMEOUT = 2.0


class ImapServer:
    def __init__(self, config: BackendConfig, store: MailStore, meter: LoadMeter) -> None:
        self.config = config
        self.store = store
        self.meter = meter
        self.tls_context = server_context(config.tls_cert, config.tls_key)
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._unauthenticated: set[Session] = set()
        self._gateway_links: set[Session] = set()
        self._trials = 0  # connections over the stranger cap given a chance to prove a gateway
        self._link_nonces = ReplayCache()
        self.keys = GatewayKeys(config.pool_secret)  # the node gives it the store's keys
        # Failed logins counted across the pool; the node shares them with the replicator.
        self.failures = PoolLoginFailures(config.lockout_failures, config.lockout_time)
        self.recent = RecentClaims()

    async def start(self) -> list[Address]:
        self.recent.start_from(await self.store.uid_tops())
        self.store.arrival_hooks.append(self.recent.arrived)
        self._server = await asyncio.start_server(self._serve, *self.config.listen_imap,
                                                  limit=self.config.max_line_length + 1024)
        bound: Address = self._server.sockets[0].getsockname()[:2]
        log.info("imap listening on %s:%d", *bound)
        if self.config.listen_imaps is not None and self.tls_context is not None:
            self._tls_server = await asyncio.start_server(
                self._serve_tls, *self.config.listen_imaps, ssl=self.tls_context,
                limit=self.config.max_line_length + 1024)
            imaps: Address = self._tls_server.sockets[0].getsockname()[:2]
            log.info("imaps (implicit TLS) listening on %s:%d", *imaps)
            return [bound, imaps]
        return [bound]

    async def close(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        self._server = self._tls_server = None
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def authenticated(self, session: Session) -> None:
        self._unauthenticated.discard(session)
        self._gateway_links.discard(session)

    def gateway_link(self, session: Session, line: bytes) -> str | None:
        """The gateway key's name if `line` proves a gateway link and its budget has room."""
        now = time.time()
        proof = gatewaylink.verify(line, self.keys.keyring, now)
        if proof is None:
            return None
        try:
            self._link_nonces.remember(bytes.fromhex(proof.nonce), now + gatewaylink.MAX_SKEW,
                                       now)
        except ControlAuthError:
            return None
        if session not in self._gateway_links and (
                len(self._gateway_links) >= self.config.max_gateway_links):
            log.warning("imap %s: gateway link of %s refused, %d open", session.peer,
                        proof.name, len(self._gateway_links))
            return None
        self._unauthenticated.discard(session)
        self._gateway_links.add(session)
        return proof.name

    async def _trial(self, session: Session, reader: asyncio.StreamReader) -> bool:
        """Over the stranger cap: is the first line a gateway's link proof?"""
        if self._trials >= self.config.max_unauthenticated:
            return False
        self._trials += 1
        try:
            async with asyncio.timeout(LINK_PROOF_TIMEOUT):
                line = await reader.readline()
        except (TimeoutError, ValueError):
            return False
        finally:
            self._trials -= 1
        name = self.gateway_link(session, line)
        if name is None:
            return False
        session.linked(name, gatewaylink.parse(line))
        return True

    async def _serve_tls(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, tls=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     tls: bool = False) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session = Session(self, reader, writer)
        session.tls = tls
        self.meter.session_opened()
        metrics.session_opened("imap")
        try:
            if len(self._unauthenticated) < self.config.max_unauthenticated:
                self._unauthenticated.add(session)
            elif not await self._trial(session, reader):
                log.warning("imap %s: refused, %d connections not yet logged in",
                            session.peer, len(self._unauthenticated))
                writer.write(untagged_status("BYE", "too many connections", "UNAVAILABLE"))
                await writer.drain()
                return
            log.debug("imap %s: connected", session.peer)
            await session.run()
        except Closed as exc:
            log.debug("imap %s (%s): closed: %s", session.peer, session.user, exc)
        except (ConnectionError, ssl.SSLError) as exc:
            log.debug("imap %s (%s): connection lost: %r", session.peer, session.user, exc)
        finally:
            session.disarm()
            self._unauthenticated.discard(session)
            self._gateway_links.discard(session)
            session._unselect()
            session._notify_off()
            self.meter.session_closed()
            metrics.session_closed("imap")
            self._tasks.discard(task)
            log.info("imap %s: session of %s ended", session.peer, session.user or "(nobody)")
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
