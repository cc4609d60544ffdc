"""The gateway's client-facing IMAP listener: accepts connections and runs one session each.

The session itself lives in `mailmux.gateway.session` (pre-login handling, the relay, the
client's view, failover); this module only owns the listening socket and the session tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from mailmux import metrics
from mailmux.gateway.config import GatewayConfig
from mailmux.gateway.guard import ConnectionGuard, peer_host, shared_penalty
from mailmux.gateway.pool import Pool
from mailmux.gateway.session.client import ClientSession

log = logging.getLogger(__name__)

Address = tuple[str, int]


class ImapProxy:
    def __init__(self, config: GatewayConfig, pool: Pool,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.pool = pool
        self.tls_context = tls_context
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.guard = ConnectionGuard(config.max_connections, config.max_connections_per_ip,
                                     config.max_unauthenticated)
        self.penalty = shared_penalty(pool, config.failed_login_delay)

    async def start(self) -> Address:
        self._server = await asyncio.start_server(self._serve, *self.config.listen_imap)
        bound: Address = self._server.sockets[0].getsockname()[:2]
        log.info("imap listening on %s:%d", *bound)
        return bound

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = peer_host(writer.get_extra_info("peername"))
        refused = self.guard.admit(address)
        if refused is not None:
            log.warning("imap %s: refused, %s", address, refused)
            with contextlib.suppress(OSError):
                writer.write(b"* BYE [UNAVAILABLE] too many connections\r\n")
                writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        session = ClientSession(self, reader, writer)
        metrics.session_opened("imap")
        try:
            await session.run()
        except Exception:
            log.exception("imap %s: session failed", session.peer)
        finally:
            log.info("imap %s: session of %s ended", session.peer, session.user or "(nobody)")
            metrics.session_closed("imap")
            self.guard.closed(address, session.user is not None)
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
