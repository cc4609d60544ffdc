"""\\Recent (RFC 3501 2.3.2): the first session to see a message owns its \\Recent flag.

The node keeps, per mailbox (its id and UIDVALIDITY: SQLite reuses the id of a deleted mailbox),
a recent-uid marker in memory: a session that SELECTs (read-write)
claims every message above it and moves it up; EXAMINE and STATUS only count what lies above.
It is node-local and forgotten on restart (RFC 3501 lets a server be approximate here; after a
restart the first session sees the mailbox as new), so nothing of it replicates.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

MailboxKey = tuple[int, int]  # (mailbox id, UIDVALIDITY)


class RecentClaims:
    def __init__(self) -> None:
        self._marker: dict[MailboxKey, int] = {}

    def marker(self, mailbox: MailboxKey) -> int:
        return self._marker.get(mailbox, 0)

    def peek(self, mailbox: MailboxKey, uids: Sequence[int]) -> list[int]:
        """The ascending `uids` nobody has claimed yet."""
        return list(uids[bisect.bisect_right(uids, self.marker(mailbox)):])

    def claim(self, mailbox: MailboxKey, uids: Sequence[int]) -> list[int]:
        """Claim the unclaimed ones among the ascending `uids`; they are this session's."""
        mine = self.peek(mailbox, uids)
        if mine:
            self._marker[mailbox] = mine[-1]
        return mine

    def forget(self, mailbox: MailboxKey) -> None:
        self._marker.pop(mailbox, None)
