"""One gateway process: the pool, the client-facing IMAP relay and SMTP submission, wired."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from types import TracebackType

from mailmux import metrics
from mailmux.gateway.config import GatewayConfig
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
            self._export_failover_figures()
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

    def _export_failover_figures(self) -> None:
        """The failover figures the gateway keeps (FailoverMetrics, heartbeat hangs), per node."""
        figures = self.pool.metrics
        hangs = self.pool.heartbeat.hangs

        def field(name: str) -> Callable[[], dict[tuple[str, ...], float]]:
            return lambda: {(node,): _number(row[name])
                            for node, row in figures.snapshot().items()}

        def quantiles() -> dict[tuple[str, ...], float]:
            out: dict[tuple[str, ...], float] = {}
            for node, row in figures.snapshot().items():
                for q, key in (("0.5", "recovery_p50"), ("0.99", "recovery_p99")):
                    if row[key] is not None:
                        out[(node, q)] = _number(row[key])
            return out

        for name, doc, key in (
            ("mailmux_gateway_failovers", "sessions that lost this node and moved elsewhere",
             "failovers"),
            ("mailmux_gateway_replays", "commands re-sent to this node with their replay id "
             "after a failover", "replays"),
            ("mailmux_gateway_failover_recoveries", "failovers whose command in flight got "
             "its answer (the node is the one lost)", "recoveries"),
        ):
            self._stack.callback(metrics.register_source(
                name, doc, ("node",), "gateway", field(key), kind="counter"))
        self._stack.callback(metrics.register_source(
            "mailmux_gateway_hangs", "times this node was found hung (silent heartbeat)",
            ("node",), "gateway", lambda: {(n,): float(c) for n, c in list(hangs.items())},
            kind="counter"))
        self._stack.callback(metrics.register_source(
            "mailmux_gateway_failover_recovery_seconds",
            "recovery time (failure to answer) of the last 256 failovers, by quantile",
            ("node", "quantile"), "gateway", quantiles))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
