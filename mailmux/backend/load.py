"""How busy this node is, as one number the gateway can compare across nodes (lower is better).

    score = sessions
          + 2 * transactions_in_flight
          + loop_lag_ms / 10
          + replication_backlog / 100
          + outbound_backlog / 100

- `sessions`: open IMAP/SMTP/LMTP connections (`session_opened` / `session_closed`).
- `transactions_in_flight`: store-touching work in progress (`with meter.transaction():`); weighted
  double because a transaction holds the writer and fsyncs, which is what makes a node slow.
- `loop_lag_ms`: how late the event loop wakes up from a 0.25 s sleep, smoothed as an
  exponentially weighted moving average (alpha 0.2, about the last second and a half). It captures
  everything that competes for this process's CPU, including work the other terms do not count.
  10 ms of lag weighs as much as one session.
- `replication_backlog`: changes waiting to be shipped to peers, from a callable the replication
  layer installs (`meter.replication_backlog = lambda: ...`); 0 until it does. A node far behind
  its peers should not attract new writers: 100 pending changes weigh as much as one session.
- `outbound_backlog`: messages in the outbound queue (`mailmux/outbound/worker.py` installs it);
  a node with a delivery backlog has work of its own to do, weighed like replication backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.25
LAG_ALPHA = 0.2


def _no_backlog() -> int:
    return 0


class LoadMeter:
    def __init__(
        self, *, sample_interval: float = SAMPLE_INTERVAL, lag_alpha: float = LAG_ALPHA
    ) -> None:
        self.sample_interval = sample_interval
        self.lag_alpha = lag_alpha
        self.sessions = 0
        self.transactions_in_flight = 0
        self.loop_lag_ms = 0.0
        self.lag_samples = 0
        self.replication_backlog: Callable[[], int] = _no_backlog
        # Per-peer figures for LOAD answers, e.g. {"peer.b.backlog": 3, "peer.b.lag_s": 0.2}.
        self.replication_details: Callable[[], dict[str, float]] = dict
        self.outbound_backlog: Callable[[], int] = _no_backlog
        self.outbound_details: Callable[[], dict[str, float]] = dict
        self._sampler: asyncio.Task[None] | None = None

    # counters ---------------------------------------------------------------------------

    def session_opened(self) -> None:
        self.sessions += 1

    def session_closed(self) -> None:
        # Clamped: a double close must not make the node look idler than idle.
        self.sessions = max(0, self.sessions - 1)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.transactions_in_flight += 1
        try:
            yield
        finally:
            self.transactions_in_flight -= 1

    # the score --------------------------------------------------------------------------

    def score(self) -> float:
        return (
            self.sessions
            + 2 * self.transactions_in_flight
            + self.loop_lag_ms / 10
            + self._backlog() / 100
            + self.outbound_backlog() / 100
        )

    def snapshot(self) -> dict[str, float]:
        return {
            "sessions": float(self.sessions),
            "transactions": float(self.transactions_in_flight),
            "loop_lag_ms": self.loop_lag_ms,
            "replication_backlog": float(self._backlog()),
            "score": self.score(),
            **self.replication_details(),
            **self.outbound_details(),
        }

    def _backlog(self) -> int:
        try:
            return max(0, self.replication_backlog())
        except Exception:
            # A broken backlog source must not take load reporting (and discovery) down.
            log.exception("replication backlog source failed; reporting 0")
            return 0

    # event-loop lag ---------------------------------------------------------------------

    def record_lag(self, lag_seconds: float) -> None:
        lag_ms = max(0.0, lag_seconds) * 1000
        if self.lag_samples == 0:
            self.loop_lag_ms = lag_ms
        else:
            self.loop_lag_ms += self.lag_alpha * (lag_ms - self.loop_lag_ms)
        self.lag_samples += 1

    async def start(self) -> None:
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample_lag(), name="load-meter-lag")

    async def close(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _sample_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A measurement, not synchronisation: how much later than asked do we wake up?
            started = loop.time()
            await asyncio.sleep(self.sample_interval)
            self.record_lag(loop.time() - started - self.sample_interval)
