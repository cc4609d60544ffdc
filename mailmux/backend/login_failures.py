"""Failed logins per user, counted across the pool, so that a guesser who spreads attempts over
gateways and nodes meets one lockout instead of a fresh allowance at each.

Each node counts the failed logins of its users and sends what changed to its peers over the
replication links (`{"t": "failures", "users": {user: n}}`: n > 0 more failures; n < 0 "logged
in successfully, forget them", then -n - 1 more failures); a peer adds what it hears to its own
count. Once a user has
`lockout_failures` failures, every login for that user is refused (`NO [AUTHENTICATIONFAILED]`,
without checking the password, and without counting) until `lockout_time` after the latest
failure; a success anywhere clears the count, and counts are forgotten after FORGET_AFTER of
quiet. Only existing users are counted, so invented names cannot push real ones out of the
bounded tables. The lockout is short on purpose: a stranger can keep one account locked by
failing again each `lockout_time`, but cannot guess faster than one password per window.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FORGET_AFTER = 15 * 60.0
MAX_TRACKED = 10_000  # users remembered, and updates queued per peer; the oldest go first
MAX_UPDATE = 500  # users per message to a peer


@dataclass
class _Entry:
    count: int
    last: float


class PoolLoginFailures:
    def __init__(self, threshold: int, lockout_time: float, peers: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.lockout_time = lockout_time
        self._clock = clock
        self._book: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, OrderedDict[str, int]] = {p: OrderedDict() for p in peers}
        self.on_change: Callable[[], None] = lambda: None  # wakes the replication links

    def count(self, user: str) -> int:
        entry = self._book.get(user)
        if entry is None or self._clock() - entry.last > FORGET_AFTER:
            return 0
        return entry.count

    def locked(self, user: str) -> float:
        """Seconds this user's logins stay refused (0: not locked)."""
        entry = self._book.get(user)
        if entry is None or self.count(user) < self.threshold:
            return 0.0
        return max(0.0, entry.last + self.lockout_time - self._clock())

    def failed(self, user: str) -> None:
        self._add(user, 1)
        self._queue(user, 1)

    def succeeded(self, user: str) -> None:
        if self._book.pop(user, None) is not None:
            self._queue(user, -1)

    def heard(self, peer: str, users: dict[str, int]) -> None:
        """A peer's update (see the module comment for what n means)."""
        for user, n in list(users.items())[:MAX_UPDATE]:
            if not isinstance(user, str) or isinstance(n, bool) or not isinstance(n, int):
                continue
            if n < 0:
                self._book.pop(user, None)
                n = -n - 1
            if n > 0:
                self._add(user, min(n, MAX_TRACKED))
                log.info("login failures for %s: %d in the pool (%d more from %s)",
                         user, self.count(user), n, peer)

    def take(self, peer: str) -> dict[str, int]:
        """The next update owed to `peer` ({} if none), removed from the queue."""
        queue = self._pending.get(peer)
        if not queue:
            return {}
        out: dict[str, int] = {}
        while queue and len(out) < MAX_UPDATE:
            user, n = queue.popitem(last=False)
            out[user] = n
        return out

    def give_back(self, peer: str, update: dict[str, int]) -> None:
        """An update that did not reach `peer` (link lost): send it again later."""
        queue = self._pending.setdefault(peer, OrderedDict())
        for user, n in update.items():
            if user not in queue:
                queue[user] = n
                queue.move_to_end(user, last=False)

    def _add(self, user: str, n: int) -> None:
        count = self.count(user) + n
        self._book.pop(user, None)  # re-inserted last: the newest are kept longest
        self._book[user] = _Entry(count, self._clock())
        while len(self._book) > MAX_TRACKED:
            self._book.popitem(last=False)

    def _queue(self, user: str, n: int) -> None:
        """Queue n more failures (n == -1: a success) for every peer."""
        for queue in self._pending.values():
            before = queue.pop(user, 0)
            if n < 0:
                queue[user] = -1  # whatever came before, the peer forgets it
            elif before < 0:
                queue[user] = before - n  # still "forget first", then n more
            else:
                queue[user] = before + n
            while len(queue) > MAX_TRACKED:
                queue.popitem(last=False)
        if self._pending:
            self.on_change()
