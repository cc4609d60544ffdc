"""Hybrid logical clock: physical milliseconds in the high bits, a counter in the low 16.

Stamps from one node strictly increase even if the wall clock steps back, and `update` with a
peer's stamp keeps causality across nodes (a change made after seeing another sorts after it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

COUNTER_BITS = 16


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    def __init__(self, physical: Callable[[], int] = wall_ms, last: int = 0) -> None:
        self._physical = physical
        self._last = last
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, self._physical() << COUNTER_BITS)
            return self._last

    def update(self, remote: int) -> int:
        with self._lock:
            self._last = max(self._last + 1, remote + 1, self._physical() << COUNTER_BITS)
            return self._last
