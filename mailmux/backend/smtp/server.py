"""The node's mail intake: an SMTP listener, plus an LMTP one when `listen_lmtp` is set.

Lifecycle as every network component: `start()` binds and returns the bound addresses (SMTP
first, then LMTP), `close()` stops listening, refuses new transactions, gives deliveries in
progress `CLOSE_GRACE` seconds to be committed and answered, then says 421 to every remaining
session and closes it.
"""

from __future__ import annotations

import asyncio
import logging

from mailmux import metrics
from mailmux.backend.config import BackendConfig
from mailmux.backend.load import LoadMeter
from mailmux.backend.smtp.handler import IntakeHandler
from mailmux.backend.smtp.lmtp import IntakeLMTP
from mailmux.backend.smtp.protocol import IntakeSMTP
from mailmux.backend.store.interface import MailStore
from mailmux.tls import server_context

log = logging.getLogger(__name__)

Address = tuple[str, int]

CLOSE_GRACE = 5.0
CLOSED_WAIT = 2.0  # for connection_lost callbacks after we closed the transports


class SmtpIntake:
    def __init__(self, config: BackendConfig, store: MailStore, meter: LoadMeter) -> None:
        self.config = config
        self.meter = meter
        self.handler = IntakeHandler(config, store, meter)
        self.smtp_address: Address | None = None
        self.lmtp_address: Address | None = None
        self._tls = server_context(config.tls_cert, config.tls_key)
        self._servers: list[asyncio.Server] = []
        self._sessions: set[IntakeSMTP] = set()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()

    # lifecycle --------------------------------------------------------------------------

    async def start(self) -> list[Address]:
        self.smtp_address = await self._listen(IntakeSMTP, self.config.listen_smtp, "SMTP")
        if self.config.listen_lmtp is not None:
            self.lmtp_address = await self._listen(IntakeLMTP, self.config.listen_lmtp, "LMTP")
            return [self.smtp_address, self.lmtp_address]
        return [self.smtp_address]

    async def close(self) -> None:
        self.handler.closing = True
        for server in self._servers:
            server.close()
        self._servers.clear()
        if not await self.handler.drain(CLOSE_GRACE):
            log.warning("intake: deliveries still running after %.1fs; cancelling", CLOSE_GRACE)
        for session in list(self._sessions):
            session.shut_down()
        try:
            await asyncio.wait_for(self._no_sessions.wait(), CLOSED_WAIT)
        except TimeoutError:
            log.warning("intake: %d sessions did not close", len(self._sessions))

    async def _listen(self, protocol: type[IntakeSMTP], address: Address, name: str) -> Address:
        loop = asyncio.get_running_loop()
        host, port = address
        server = await loop.create_server(
            lambda: protocol(
                self.handler, config=self.config, tracker=self, tls_context=self._tls, loop=loop
            ),
            host,
            port,
        )
        self._servers.append(server)
        bound: Address = server.sockets[0].getsockname()[:2]
        log.info("%s intake listening on %s:%d", name, *bound)
        return bound

    # SessionTracker ---------------------------------------------------------------------

    def opened(self, protocol: IntakeSMTP) -> None:
        self._sessions.add(protocol)
        self._no_sessions.clear()
        self.meter.session_opened()
        metrics.session_opened(protocol.metrics_protocol)

    def closed(self, protocol: IntakeSMTP) -> None:
        self._sessions.discard(protocol)
        if not self._sessions:
            self._no_sessions.set()
        self.meter.session_closed()
        metrics.session_closed(protocol.metrics_protocol)
