"""Rewriting a framed client command so the backend never has to send a continuation.

The gateway answers the client's synchronising literals itself (it reads the whole command before
relaying it), so it forwards every `{n}` as the non-synchronising `{n+}` (LITERAL+, which every
mailmux backend offers). Pure function over the framer's output: one command, literals included.
"""

from __future__ import annotations

import re

_LITERAL_AT_END = re.compile(rb"(~?)\{(\d+)(\+?)\}$")


def non_synchronising(raw: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            out.append(raw[pos:])
            return b"".join(out)
        line = raw[pos:end]
        match = _LITERAL_AT_END.search(line)
        if match is None:
            out.append(raw[pos : end + 2])
            pos = end + 2
            continue
        size = int(match.group(2))
        marker = b"%s{%d+}" % (match.group(1), size)
        out.append(line[: match.start()] + marker + b"\r\n")
        out.append(raw[end + 2 : end + 2 + size])
        pos = end + 2 + size
