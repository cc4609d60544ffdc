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


LITERAL_CHUNK = 256 * 1024
STREAM_AFTER = 256 * 1024  # bytes of one response held before it is passed on in pieces
MAX_HELD = 16 * 1024 * 1024  # a response nobody can stream (the gateway's own commands)
Spill = Callable[[bytes], Awaitable[None]]


async def read_response(
    reader: asyncio.StreamReader, max_literal: int,
    progress: Callable[[], None] | None = None, spill: Spill | None = None,
    first: bytes | None = None,
) -> Response:
    """One whole response; EOF raises ConnectionResetError (the backend is gone).

    `progress` is called whenever bytes arrive, so a caller's deadline can measure silence
    rather than the length of a big literal.

    Memory stays bounded whatever a message holds: lines longer than the reader's limit are
    read in pieces, literals in chunks, and once more than STREAM_AFTER bytes are held they go
    to `spill` (the client) as they come; the Response returned then holds only the rest and
    says `streamed`. Without `spill`, a response over MAX_HELD raises ResponseTooLarge.
    """
    held = _Held(spill)
    tail = b""  # the end of a line read in pieces, where a literal announcement may start
    while True:
        try:
            # `first`: the response's first line, already read by the caller
            line, first = (first, None) if first is not None else (
                await reader.readuntil(b"\n"), None)
        except asyncio.LimitOverrunError as exc:
            piece = await reader.readexactly(max(1, exc.consumed))
            tail = (tail + piece)[-40:]
            if progress is not None:
                progress()
            await held.keep(piece)
            continue
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("backend closed the connection") from exc
        if progress is not None:
            progress()
        await held.keep(line)
        match = _LITERAL_AT_END.search((tail + line)[-40:])
        tail = b""
        if match is None:
            return held.response()
        size = int(match.group(1))
        if size > max_literal:
            raise ResponseTooLarge(f"backend literal of {size} octets")
        while size > 0:
            chunk = await reader.readexactly(min(size, LITERAL_CHUNK))
            size -= len(chunk)
            if progress is not None:
                progress()
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


# What the gateway reads out of untagged responses to keep the client's view -----------------

_FETCH_START = re.compile(rb"^\* (\d+) FETCH \(", re.IGNORECASE)
_VANISHED = re.compile(rb"^\* VANISHED (\(EARLIER\) )?([0-9:,]+)\r\n$", re.IGNORECASE)
_HIGHESTMODSEQ = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]", re.IGNORECASE)
_LITERAL_HEAD = re.compile(rb"~?\{(\d+)\+?\}\r\n")
_WANTED = (b"UID", b"FLAGS", b"MODSEQ")


@dataclass(frozen=True)
class FetchData:
    """The items of one `* n FETCH (...)` response the view needs; None when absent."""

    seq: int
    uid: int | None
    flags: bytes | None  # the inside of the FLAGS list, as the server sent it
    modseq: int | None


def parse_fetch(raw: bytes) -> FetchData | None:
    """UID, FLAGS and MODSEQ of a FETCH response, skipping over literals and strings (a body
    may well contain the text "UID 5"). None when this is no FETCH response or it is garbled."""
    match = _FETCH_START.match(raw)
    if match is None:
        return None
    found: dict[bytes, bytes] = {}
    pos = match.end()
    try:
        while True:
            while raw[pos : pos + 1] == b" ":
                pos += 1
            if raw[pos : pos + 1] in (b")", b""):
                break
            start = pos
            while raw[pos : pos + 1] not in (b" ", b"(", b")", b""):
                if raw[pos : pos + 1] == b"[":
                    pos = raw.index(b"]", pos)
                pos += 1
            name = raw[start:pos].upper()
            while raw[pos : pos + 1] == b" ":
                pos += 1
            value_start = pos
            pos = _skip_value(raw, pos)
            if name in _WANTED:
                found[name] = raw[value_start:pos]
    except (ValueError, IndexError):
        return None
    uid = found.get(b"UID")
    flags = found.get(b"FLAGS")
    modseq = found.get(b"MODSEQ")
    try:
        return FetchData(
            seq=int(match.group(1)),
            uid=int(uid) if uid is not None else None,
            flags=flags[1:-1] if flags is not None and flags.startswith(b"(") else None,
            modseq=int(modseq.strip(b"()")) if modseq is not None else None,
        )
    except ValueError:
        return None


def _skip_value(raw: bytes, pos: int) -> int:
    """Position just after the value starting at `pos` (atom, string, literal or list)."""
    depth = 0
    while True:
        c = raw[pos : pos + 1]
        if c == b"":
            raise ValueError("truncated FETCH response")
        if c == b"(":
            depth += 1
            pos += 1
        elif c == b")":
            if depth == 0:
                return pos
            depth -= 1
            pos += 1
            if depth == 0:
                return pos
        elif c == b'"':
            pos += 1
            while raw[pos : pos + 1] != b'"':
                pos += 2 if raw[pos : pos + 1] == b"\\" else 1
                if pos >= len(raw):
                    raise ValueError("unterminated string")
            pos += 1
            if depth == 0:
                return pos
        elif c in (b"{", b"~") and (m := _LITERAL_HEAD.match(raw, pos)) is not None:
            pos = m.end() + int(m.group(1))
            if depth == 0:
                return pos
        elif c == b" ":
            if depth == 0:
                return pos
            pos += 1
        else:
            while raw[pos : pos + 1] not in (b" ", b"(", b")", b'"', b""):
                if raw[pos : pos + 1] == b"[":
                    pos = raw.index(b"]", pos)
                pos += 1
            if depth == 0:
                return pos


def vanished(raw: bytes) -> list[int] | None:
    """The UIDs of a `* VANISHED [(EARLIER)] set` response (QRESYNC), bounded by the caller."""
    match = _VANISHED.match(raw)
    if match is None:
        return None
    uids: list[int] = []
    for part in match.group(2).split(b","):
        low, _, high = part.partition(b":")
        lo, hi = int(low), int(high or low)
        if lo > hi:
            lo, hi = hi, lo
        if hi - lo > 1_000_000:
            return None  # an absurd range: the caller falls back to a full resynchronisation
        uids.extend(range(lo, hi + 1))
    return uids


def highestmodseq(raw: bytes) -> int | None:
    match = _HIGHESTMODSEQ.search(raw)
    return int(match.group(1)) if match else None
