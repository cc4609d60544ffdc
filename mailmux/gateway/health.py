"""Which pool members are out of the candidate list for now (patent §0031).

A node that fails twice in a row is quarantined: discovery leaves it out until a background
re-probe (a signed HEALTH request) succeeds. Re-probes back off exponentially so a dead node
costs almost nothing. A success at any time clears the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

FAILURES_TO_QUARANTINE = 2
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0


@dataclass
class NodeRecord:
    failures: int = 0
    quarantined_until: float | None = None  # next re-probe time while quarantined
    backoff: float = FIRST_BACKOFF
    last_error: str = ""


class HealthBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, NodeRecord] = {}

    def record(self, node_id: str) -> NodeRecord:
        return self._records.setdefault(node_id, NodeRecord())

    def failed(self, node_id: str, error: str) -> None:
        rec = self.record(node_id)
        rec.failures += 1
        rec.last_error = error
        if rec.failures >= FAILURES_TO_QUARANTINE and rec.quarantined_until is None:
            rec.quarantined_until = self._clock() + rec.backoff

    def quarantine(self, node_id: str, error: str) -> None:
        """Out at once (a hung node): no second failure is needed to know it is not serving."""
        rec = self.record(node_id)
        rec.failures = max(rec.failures + 1, FAILURES_TO_QUARANTINE)
        rec.last_error = error
        if rec.quarantined_until is None:
            rec.quarantined_until = self._clock() + rec.backoff

    def succeeded(self, node_id: str) -> None:
        rec = self.record(node_id)
        rec.failures = 0
        rec.quarantined_until = None
        rec.backoff = FIRST_BACKOFF

    def probe_failed(self, node_id: str, error: str) -> None:
        rec = self.record(node_id)
        rec.last_error = error
        rec.backoff = min(rec.backoff * 2, MAX_BACKOFF)
        rec.quarantined_until = self._clock() + rec.backoff

    def is_quarantined(self, node_id: str) -> bool:
        return self.record(node_id).quarantined_until is not None

    def quarantined(self) -> list[str]:
        return [n for n, rec in self._records.items() if rec.quarantined_until is not None]

    def due_for_probe(self) -> list[str]:
        now = self._clock()
        return [
            node_id
            for node_id, rec in self._records.items()
            if rec.quarantined_until is not None and rec.quarantined_until <= now
        ]

    def last_error(self, node_id: str) -> str:
        return self.record(node_id).last_error
