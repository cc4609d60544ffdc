"""Batch mode: when queued changes may ship (the patent's "copy at night" mode).

Changes ship inside the daily window (minutes after local midnight, may wrap past midnight, e.g.
22:00-05:00) or, at any time, once the backlog reaches its threshold so a busy day cannot grow an
unbounded queue. The clock is a parameter, so tests move time instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BatchWindow:
    start: int  # minutes after midnight
    end: int
    backlog_threshold: int

    def inside(self, moment: datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # wraps past midnight

    def may_ship(self, moment: datetime, backlog: int) -> bool:
        return backlog >= self.backlog_threshold or self.inside(moment)


def local_now() -> datetime:
    return datetime.now().astimezone()


Clock = Callable[[], datetime]
