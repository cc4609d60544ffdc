"""Commands a client pipelined behind the one in flight, as far as EXPUNGE is concerned.

RFC 3501 5.5: while a command that names messages by sequence number is in progress — and a
command the client has sent is in progress for the client, even if the gateway has not passed
it on yet — no EXPUNGE (nor VANISHED) may reach the client, or the client cannot tell which
message its numbers meant. The gateway relays one command at a time, so the node never sees
the pipelined ones: the gateway holds such an EXPUNGE back itself (the view's `pending`) and
tells it at the next point that may carry it.
"""

from __future__ import annotations

import re

# A command line naming messages by number: a non-UID FETCH, STORE, SEARCH, COPY, MOVE, SORT
# or THREAD. A literal's contents may look like one: that only makes the gateway wait longer.
_BY_NUMBER = re.compile(rb"^[^ \r\n]+ (?:FETCH|STORE|SEARCH|COPY|MOVE|SORT|THREAD)[ \r\n]",
                        re.IGNORECASE | re.MULTILINE)


def names_messages_by_number(pipelined: bytes) -> bool:
    """Whether client input received but not yet relayed holds a command by number."""
    return _BY_NUMBER.search(pipelined) is not None
