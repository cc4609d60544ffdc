"""A time budget for work a client controls (pattern matching, searching, rendering).

The event loop must never run user-controlled work without a bound: such work either runs in a
thread (`run_bounded`), so that the loop keeps serving everybody else, or checks the budget
itself between steps. Either way it stops at the deadline with `LimitExceeded`, which the
session answers as `NO [LIMIT]`. Threads cannot be killed, so the work must call `check()`
often enough that it really ends near the deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from mailmux.backend.errors import LimitExceeded

T = TypeVar("T")
CHECK_EVERY = 256  # calls to tick() between clock reads


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._ticks = 0

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"command exceeded its time budget of {self.seconds:g}s")

    def tick(self) -> None:
        """A cheap check for tight loops: reads the clock every CHECK_EVERY calls."""
        self._ticks += 1
        if self._ticks % CHECK_EVERY == 0:
            self.check()


async def run_bounded(fn: Callable[[Budget], T], seconds: float) -> T:
    """Run fn off the event loop; it must check the budget it is given."""
    return await asyncio.to_thread(fn, Budget(seconds))
