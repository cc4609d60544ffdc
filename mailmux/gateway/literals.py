"""Rewriting a framed client command so the backend never has to send a continuation.

The gateway answers the client's synchronising literals itself (it reads the whole command before
relaying it), so it forwards every `{n}` as the non-synchronising `{n+}` (LITERAL+, which every
mailmux backend offers). Pure function over the framer's output: one command, literals included.
It uses the framer's own definition of a literal announcement: anything the framer did not take
for a literal (`{000000000000000000005}`, say) must reach the backend unchanged, or the backend
would wait for octets the client never sends.
"""

from __future__ import annotations

from mailmux.protocol.imap.framing import LITERAL_ANNOUNCEMENT


def non_synchronising(raw: bytes) -> bytes:
    if b"{" not in raw:
        return raw  # most commands: no literal at all
    out: list[bytes] = []
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            out.append(raw[pos:])
            return b"".join(out)
        line = raw[pos : end + 1]
        match = LITERAL_ANNOUNCEMENT.search(line)
        if match is None:
            out.append(line)
            pos = end + 1
            continue
        size = int(match.group(2))
        marker = b"%s{%d+}" % (match.group(1), size)
        out.append(line[: match.start()] + marker + line[match.end(3) + 1 :])
        out.append(raw[end + 1 : end + 1 + size])
        pos = end + 1 + size
