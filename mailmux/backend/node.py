"""One backend node: the store, the load meter and the three network components, wired together.

`async with Node(config) as node:` opens everything in dependency order and closes it in reverse
(each listener stops accepting, lets its sessions finish briefly, then cancels them; the store
closes last so that nothing in flight loses its database). The control endpoint starts last:
once it answers "who serves USER?" the IMAP and SMTP ports it reports are already listening.

Components are imported when the node starts, so that `mailmux-backend user ...` does not load
the servers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mailmux.backend.config import BackendConfig
from mailmux.backend.gatewaykeys import GatewayKeys
from mailmux.backend.load import LoadMeter
from mailmux.backend.login_failures import PoolLoginFailures
from mailmux.backend.store.interface import MailStore

if TYPE_CHECKING:
    from mailmux.outbound.worker import OutboundWorker
    from mailmux.replication.peers import Replicator

log = logging.getLogger(__name__)

Address = tuple[str, int]
READY_FILE = "ready.json"


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Node:
    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.meter = LoadMeter()
        self.ready: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._store: MailStore | None = None
        self.replicator: Replicator | None = None
        self.outbound: OutboundWorker | None = None

    @property
    def store(self) -> MailStore:
        assert self._store is not None, "the node is not running"
        return self._store

    @property
    def ready_path(self) -> Path:
        return self.config.data_dir / READY_FILE

    async def __aenter__(self) -> Node:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        log.info("node %s stopping", self.config.node_id)
        await self._stack.aclose()
        log.info("node %s stopped", self.config.node_id)

    async def _start(self) -> None:
        from mailmux.backend.control.server import ControlServer
        from mailmux.backend.imap.server import ImapServer
        from mailmux.backend.pruning import HistoryPruner
        from mailmux.backend.smtp.server import SmtpIntake
        from mailmux.backend.store.sqlite import SqliteStore

        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = await self._stack.enter_async_context(
            SqliteStore.open(config.db_path, config.node_id, config.domains)
        )
        store.logins.ttl = config.auth_cache_ttl
        self._store = store
        keys = GatewayKeys(config.pool_secret, store.live_gateway_keys)
        await keys.start()
        self._stack.push_async_callback(keys.close)
        await self.meter.start()
        self._stack.push_async_callback(self.meter.close)
        pruner = HistoryPruner(config, store)
        pruner.start()
        self._stack.push_async_callback(pruner.close)

        failures = PoolLoginFailures(config.lockout_failures, config.lockout_time,
                                     [peer for peer, _, _ in config.replication.peers])
        replication_address = None
        if config.replication.listen is not None:
            from mailmux.replication.peers import Replicator

            self.replicator = Replicator(config, store, self.meter)
            self.replicator.failures = failures
            failures.on_change = self.replicator.wake_all
            replication_address = (await self.replicator.start())[0]
            self._stack.push_async_callback(self.replicator.close)

        if config.outbound.enabled:
            from mailmux.outbound.worker import OutboundWorker

            self.outbound = OutboundWorker(config, store, self.meter)
            await self.outbound.start()
            self._stack.push_async_callback(self.outbound.close)

        imap = ImapServer(config, self.store, self.meter)
        imap.keys = keys
        imap.failures = failures
        imap_address, *imaps = await imap.start()
        self._stack.push_async_callback(imap.close)

        intake = SmtpIntake(config, self.store, self.meter)
        intake.handler.outbound = self.outbound
        intake.handler.keys = keys
        self._stack.push_async_callback(intake.close)
        smtp_address, *lmtp = await intake.start()

        control = ControlServer(config, self.store, self.meter)
        if self.replicator is not None and self.replicator.homes is not None:
            control.home_of = self.replicator.homes.holder
        control.keys = keys
        control.endpoints = {
            "imap": format_address(imap_address),
            "smtp": format_address(smtp_address),
        }
        control_address = (await control.start())[0]
        self._stack.push_async_callback(control.close)

        metrics_address = self._start_metrics()

        self.ready = {
            "node": config.node_id,
            "pid": os.getpid(),
            "imap": format_address(imap_address),
            "smtp": format_address(smtp_address),
            "lmtp": format_address(lmtp[0]) if lmtp else None,
            "control": format_address(control_address),
            "replication": format_address(replication_address) if replication_address else None,
            "imaps": format_address(imaps[0]) if imaps else None,
            "metrics": format_address(metrics_address) if metrics_address else None,
        }
        self._write_ready()
        log.info("node %s ready: %s", config.node_id, self.ready)

    def _start_metrics(self) -> Address | None:
        """Gauges read at scrape time, and the /metrics endpoint when `metrics_listen` is set."""
        from mailmux import metrics

        key = self.config.node_id
        db = self.config.db_path
        self._stack.callback(metrics.register_source(
            "mailmux_store_bytes", "size of the node's SQLite database with its WAL", (), key,
            lambda: {(): float(_store_bytes(db))},
        ))
        replicator = self.replicator
        if replicator is not None:
            self._stack.callback(metrics.register_source(
                "mailmux_replication_backlog", "changes not yet acknowledged, per peer",
                ("peer",), key, lambda: _per_peer(replicator.details(), "backlog"),
            ))
            self._stack.callback(metrics.register_source(
                "mailmux_replication_lag_seconds",
                "how long the oldest unacknowledged change has waited, per peer", ("peer",),
                key, lambda: _per_peer(replicator.details(), "lag_s"),
            ))
        if self.config.metrics_listen is None:
            return None
        server = metrics.start_metrics_server(self.config.metrics_listen)
        self._stack.callback(server.close)
        return server.address

    def _write_ready(self) -> None:
        # Written whole then renamed, so a reader never sees half a file; removed on a clean stop
        # so that a leftover file means the node died.
        path = self.ready_path
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.ready) + "\n")
        os.replace(partial, path)
        self._stack.callback(self._remove_ready)

    def _remove_ready(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ready_path.unlink()


def _store_bytes(db: Path) -> int:
    total = 0
    for path in (db, db.with_name(db.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def _per_peer(details: dict[str, float], field: str) -> dict[tuple[str, ...], float]:
    """{"peer.b.backlog": 3.0, ...} → {("b",): 3.0} for one field."""
    out: dict[tuple[str, ...], float] = {}
    for name, value in details.items():
        prefix, _, rest = name.partition(".")
        peer, _, what = rest.rpartition(".")
        if prefix == "peer" and what == field:
            out[(peer,)] = value
    return out
