"""What stands between strangers and the pool at the gateway: connection caps and login penalties.

Connections: at most `max_connections` at once, `max_connections_per_ip` from one address and
`max_unauthenticated` not yet logged in; each unauthenticated client has `login_timeout` to log
in. Beyond a cap the client gets `* BYE [UNAVAILABLE]` (IMAP) or `421 4.7.0` (SMTP) at once, so
no number of idle sockets can use up the gateway's file descriptors.

Logins: every failure — wrong password or unknown user alike — is counted against the user and
the source address, across connections, IMAP and SMTP. A login waits first for the penalty both
have earned (doubling per failure, at most MAX_PENALTY, forgotten after FORGET_AFTER), and every
failure is answered only once `failed_login_delay` has passed since the attempt began, so an
unknown user and a wrong password look the same: the same answer after the same time.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

MAX_PENALTY = 30.0
FORGET_AFTER = 15 * 60.0
MAX_TRACKED = 10_000  # users and addresses remembered; the oldest are forgotten first


@dataclass
class _Failures:
    count: int
    last: float


class LoginPenalty:
    def __init__(self, base_delay: float) -> None:
        self.base_delay = base_delay
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def _count(self, key: str, now: float) -> int:
        entry = self._failures.get(key)
        if entry is None or now - entry.last > FORGET_AFTER:
            return 0
        return entry.count

    def penalty(self, user: str, address: str) -> float:
        """Seconds a new attempt for this user from this address must wait first."""
        now = time.monotonic()
        worst = max(self._count("u:" + user.lower(), now), self._count("a:" + address, now))
        if worst == 0:
            return 0.0
        return float(min(self.base_delay * 2 ** (worst - 1), MAX_PENALTY))

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        for key in ("u:" + user.lower(), "a:" + address):
            count = self._count(key, now) + 1
            self._failures.pop(key, None)  # re-inserted last: the newest are kept longest
            self._failures[key] = _Failures(count, now)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        self._failures.pop("u:" + user.lower(), None)
        self._failures.pop("a:" + address, None)

    async def answer_failure(self, started: float, user: str, address: str) -> None:
        """Count a failure and wait until the uniform failure delay has passed."""
        self.failed(user, address)
        remaining = started + self.base_delay - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)  # the same timing for every kind of failure


class ConnectionGuard:
    """Counts open and unauthenticated connections, in total and per address."""

    def __init__(self, max_connections: int, per_ip: int, max_unauthenticated: int) -> None:
        self.max_connections = max_connections
        self.per_ip = per_ip
        self.max_unauthenticated = max_unauthenticated
        self.open = 0
        self.unauthenticated = 0
        self._by_ip: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """None and the connection is counted, or why it is refused."""
        if self.open >= self.max_connections:
            return f"{self.open} connections open"
        if self._by_ip.get(address, 0) >= self.per_ip:
            return f"{self.per_ip} connections from {address}"
        if self.unauthenticated >= self.max_unauthenticated:
            return f"{self.unauthenticated} connections not logged in"
        self.open += 1
        self.unauthenticated += 1
        self._by_ip[address] = self._by_ip.get(address, 0) + 1
        return None

    def authenticated(self) -> None:
        self.unauthenticated -= 1

    def closed(self, address: str, authenticated: bool) -> None:
        self.open -= 1
        if not authenticated:
            self.unauthenticated -= 1
        left = self._by_ip.get(address, 1) - 1
        if left:
            self._by_ip[address] = left
        else:
            self._by_ip.pop(address, None)


_SHARED: weakref.WeakKeyDictionary[object, LoginPenalty] = weakref.WeakKeyDictionary()


def shared_penalty(pool: object, base_delay: float) -> LoginPenalty:
    """One penalty book per pool, so IMAP and SMTP logins count against each other."""
    penalty = _SHARED.get(pool)
    if penalty is None:
        penalty = _SHARED[pool] = LoginPenalty(base_delay)
    return penalty


def peer_host(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
