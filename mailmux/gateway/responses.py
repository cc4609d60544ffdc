"""Reading whole IMAP responses from a backend stream, and what the gateway learns from them.

A response is one line, or a line ending in a `{n}` literal announcement followed by n octets
and the rest of the response, repeatedly (FETCH bodies). The gateway relays them byte for byte;
it only looks at tagged status lines, continuations and the few untagged responses that describe
the selected mailbox (EXISTS, EXPUNGE, UIDVALIDITY, UIDNEXT), which it needs for failover.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r\n$", re.IGNORECASE)
_EXPUNGE = re.compile(rb"^\* (\d+) EXPUNGE\r\n$", re.IGNORECASE)
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]", re.IGNORECASE)


class ResponseTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Response:
    raw: bytes

    @property
    def is_continuation(self) -> bool:
        return self.raw.startswith(b"+")

    def tagged_as(self, tag: bytes) -> bool:
        return self.raw.startswith(tag + b" ")

    @property
    def status(self) -> bytes:
        """OK / NO / BAD / BYE / PREAUTH of a status response, upper-cased (b"" otherwise)."""
        parts = self.raw.split(b" ", 2)
        return parts[1].upper() if len(parts) > 1 else b""

    def number(self, pattern: re.Pattern[bytes]) -> int | None:
        match = pattern.search(self.raw)
        return int(match.group(1)) if match else None

    @property
    def exists(self) -> int | None:
        return self.number(_EXISTS)

    @property
    def expunge(self) -> int | None:
        return self.number(_EXPUNGE)

    @property
    def uidvalidity(self) -> int | None:
        return self.number(_UIDVALIDITY)

    @property
    def uidnext(self) -> int | None:
        return self.number(_UIDNEXT)


LITERAL_CHUNK = 256 * 1024


async def read_response(
    reader: asyncio.StreamReader, max_literal: int,
    progress: Callable[[], None] | None = None,
) -> Response:
    """One whole response; EOF raises ConnectionResetError (the backend is gone).

    `progress` is called whenever bytes arrive, so a caller's deadline can measure silence
    rather than the length of a big literal.
    """
    parts: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionResetError("backend closed the connection")
        if progress is not None:
            progress()
        parts.append(line)
        match = _LITERAL_AT_END.search(line)
        if match is None:
            return Response(b"".join(parts))
        size = int(match.group(1))
        if size > max_literal:
            raise ResponseTooLarge(f"backend literal of {size} octets")
        while size > 0:
            chunk = await reader.readexactly(min(size, LITERAL_CHUNK))
            size -= len(chunk)
            parts.append(chunk)
            if progress is not None:
                progress()
