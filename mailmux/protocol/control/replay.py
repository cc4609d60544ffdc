"""Remembering nonces so that a captured control message cannot be accepted twice.

A nonce only needs remembering while its message's timestamp is still inside the acceptance
window; after that the timestamp check alone rejects a replay. Memory is bounded: when the cache
is full the entry closest to expiry is forgotten early, and the *horizon* (the latest expiry ever
forgotten) moves up to it. Any message whose window ends at or before the horizon is refused as
stale, so forgetting a nonce never lets its replay in; a flood merely shrinks the window.
"""

from __future__ import annotations

import heapq

from mailmux.protocol.control.errors import ControlAuthError

DEFAULT_MAX_ENTRIES = 65_536


class ReplayCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._by_expiry: list[tuple[float, bytes]] = []
        self._seen: set[bytes] = set()
        self._horizon = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, nonce: bytes, expires: float, now: float) -> None:
        """Record `nonce`, valid until `expires`; raise ControlAuthError if it cannot be new."""
        self._expire(now)
        if nonce in self._seen:
            raise ControlAuthError("forged or replayed: nonce seen before", reason="replay")
        if len(self._seen) >= self.max_entries:
            self._forget_oldest()
        if expires < now or expires <= self._horizon:
            raise ControlAuthError(
                "forged or replayed: older than the replay horizon", reason="stale"
            )
        heapq.heappush(self._by_expiry, (expires, nonce))
        self._seen.add(nonce)

    def _expire(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        expiry, nonce = heapq.heappop(self._by_expiry)
        self._seen.discard(nonce)
        self._horizon = max(self._horizon, expiry)
