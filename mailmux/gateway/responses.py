"""Reading whole IMAP responses from a backend stream, and what the gateway learns from them.

A response is one line, or a line ending in a `{n}` literal announcement followed by n octets
and the rest of the response, repeatedly (FETCH bodies). The gateway relays them byte for byte;
it only looks at tagged status lines, continuations and the few untagged responses that describe
the selected mailbox (EXISTS, EXPUNGE, UIDVALIDITY, UIDNEXT), which it needs for failover.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
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
    streamed: bool = False  # the start of this response already went to the client

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


STREAM_AFTER = 256 * 1024  # bytes of one response held before it is passed on in pieces
MAX_HELD = 16 * 1024 * 1024  # a response nobody can stream (the gateway's own commands)
CHUNK = 64 * 1024
Spill = Callable[[bytes], Awaitable[None]]


async def read_response(reader: asyncio.StreamReader, max_literal: int,
                        spill: Spill | None = None) -> Response:
    """One whole response; EOF raises ConnectionResetError (the backend is gone).

    Memory stays bounded whatever a message holds: lines longer than the reader's limit are
    read in pieces, literals in chunks, and once more than STREAM_AFTER bytes are held they go
    to `spill` (the client) as they come; the Response returned then holds only the rest and
    says `streamed`. Without `spill`, a response over MAX_HELD raises ResponseTooLarge."""
    held = _Held(spill)
    tail = b""  # the end of a line read in pieces, where a literal announcement may start
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            piece = await reader.readexactly(max(1, exc.consumed))
            tail = (tail + piece)[-40:]
            await held.keep(piece)
            continue
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("backend closed the connection") from exc
        await held.keep(line)
        match = _LITERAL_AT_END.search((tail + line)[-40:])
        tail = b""
        if match is None:
            return held.response()
        size = int(match.group(1))
        if size > max_literal:
            raise ResponseTooLarge(f"backend literal of {size} octets")
        while size:
            chunk = await reader.readexactly(min(size, CHUNK))
            size -= len(chunk)
            await held.keep(chunk)


class _Held:
    def __init__(self, spill: Spill | None) -> None:
        self.spill = spill
        self.parts: list[bytes] = []
        self.size = 0
        self.streamed = False

    async def keep(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.spill is None:
            if self.size > MAX_HELD:
                raise ResponseTooLarge(f"response over {MAX_HELD} octets")
        elif self.size > STREAM_AFTER:
            await self.spill(b"".join(self.parts))
            self.parts.clear()
            self.size = 0
            self.streamed = True

    def response(self) -> Response:
        return Response(b"".join(self.parts), streamed=self.streamed)
