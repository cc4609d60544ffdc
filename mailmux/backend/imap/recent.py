"""\\Recent (RFC 3501 2.3.2): the first session to see a message owns its \\Recent flag.

The node keeps, per mailbox (its id and UIDVALIDITY: SQLite reuses the id of a deleted mailbox),
a recent-uid marker in memory: a session that SELECTs (read-write)
claims every message above it and moves it up; EXAMINE and STATUS only count what lies above.

Sessions work on the user's home, so the home hands out \\Recent. A message another node
committed counts as seen there (`arrived`), and so does everything a node held when it
started (`start_from`): when a replica becomes home after a failover or a restart, its
sessions do not get \\Recent again for messages sessions of the old home already own (imaptest:
"\\Recent flag in multiple sessions"). RFC 3501 lets a server be approximate here; erring
this way, a message nobody saw before the failover is not recent to anyone.
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

    def start_from(self, tops: dict[MailboxKey, int]) -> None:
        """What the node held when it started counts as seen."""
        for mailbox, top in tops.items():
            self._marker[mailbox] = max(top, self.marker(mailbox))

    def arrived(self, tops: dict[MailboxKey, int]) -> None:
        """Messages committed on another node (the home) up to these UIDs: seen there."""
        self.start_from(tops)

    def forget(self, mailbox: MailboxKey) -> None:
        self._marker.pop(mailbox, None)
