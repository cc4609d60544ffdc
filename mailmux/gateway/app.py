"""One gateway process: the pool, the client-facing IMAP relay and SMTP submission, wired."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from mailmux import metrics
from mailmux.gateway.config import GatewayConfig
from mailmux.gateway.eventloop import loop_name
from mailmux.gateway.imap_proxy import ImapProxy
from mailmux.gateway.pool import Pool
from mailmux.gateway.submission import SubmissionServer
from mailmux.tls import server_context

log = logging.getLogger(__name__)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.pool = Pool(config)
        self.ready: dict[str, str] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Gateway:
        try:
            context = server_context(self.config.tls_cert, self.config.tls_key)
            self._stack.push_async_callback(self.pool.close)
            imap = ImapProxy(self.config, self.pool, context)
            imap_address = await imap.start()
            self._stack.push_async_callback(imap.close)
            submission = SubmissionServer(self.config, self.pool, context)
            submission_address = await submission.start()
            self._stack.push_async_callback(submission.close)
            metrics_server = None
            if self.config.metrics_listen is not None:
                metrics_server = metrics.start_metrics_server(self.config.metrics_listen)
                self._stack.callback(metrics_server.close)
        except BaseException:
            await self._stack.aclose()
            raise
        self.ready = {
            "imap": format_address(imap_address),
            "submission": format_address(submission_address),
            "event_loop": loop_name(asyncio.get_running_loop()),
        }
        if metrics_server is not None:
            self.ready["metrics"] = format_address(metrics_server.address)
        log.info("gateway ready: %s", self.ready)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
