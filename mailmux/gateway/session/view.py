"""What the client has been shown of the selected mailbox, kept for failover."""

from __future__ import annotations

from dataclasses import dataclass

from mailmux.gateway.responses import Response


@dataclass
class MailboxView:
    """What the client has been told about the selected mailbox."""

    select: bytes  # the SELECT/EXAMINE command as the client sent it, tag excluded
    uidvalidity: int | None = None
    uidnext: int | None = None
    exists: int = 0

    def observe(self, response: Response) -> None:
        if not response.raw.startswith(b"* "):
            return
        if (n := response.exists) is not None:
            self.exists = n
        elif response.expunge is not None:
            self.exists = max(0, self.exists - 1)
        elif (v := response.uidvalidity) is not None:
            self.uidvalidity = v
        elif (u := response.uidnext) is not None:
            self.uidnext = u
