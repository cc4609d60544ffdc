"""Verified-credentials cache (as Dovecot's auth_cache), so a client that opens several
connections at once (Thunderbird: 3 to 5) pays one argon2id verification, not one each.

An entry is the user, a keyed fast hash of the password (HMAC-SHA256 with a key made fresh in
each process: the cache never holds the password, and its digests are useless elsewhere) and
the stored password hash it was checked against. A hit needs all three, within the TTL: a
password changed here (`drop`) or by replication (the stored hash differs) or a deleted user
(no stored hash) never hits. Only successes are cached, so guessing stays slow.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    stored_hash: str
    expires: float


class LoginCache:
    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def hit(self, user: str, password: str, stored_hash: str | None) -> bool:
        entry = self._entries.get(user)
        if entry is None or stored_hash is None:
            return False
        if entry.expires < time.monotonic() or entry.stored_hash != stored_hash:
            del self._entries[user]
            return False
        return hmac.compare_digest(entry.digest, self._digest(user, password))

    def remember(self, user: str, password: str, stored_hash: str) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(user, None)
        self._entries[user] = _Entry(self._digest(user, password), stored_hash,
                                     time.monotonic() + self.ttl)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, user: str) -> None:
        self._entries.pop(user, None)
