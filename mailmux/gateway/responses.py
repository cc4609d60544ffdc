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


_STATUS_WORDS = frozenset({b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"})
_VIEW_WORDS = frozenset({b"EXISTS", b"EXPUNGE", b"FETCH"})


class Response:
    """One whole response as relayed. What the gateway reads out of it is found from its first
    words only (`kind`), once: a FETCH body or a long SEARCH is never scanned for response
    codes, which only a status response may carry (and a message body may well imitate).

    A plain class with slots: one is made per relayed response, and what it learns is cached
    on it without the lock functools.cached_property takes."""

    __slots__ = ("_fetch", "_kind", "raw", "streamed")

    def __init__(self, raw: bytes, streamed: bool = False) -> None:
        self.raw = raw
        self.streamed = streamed  # the start of this response already went to the client
        self._kind: tuple[bytes, int] | None = None
        self._fetch: FetchData | bool | None = False  # False: not parsed yet

    def __repr__(self) -> str:
        return f"Response({self.raw[:80]!r}, streamed={self.streamed})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Response) and self.raw == other.raw
                and self.streamed == other.streamed)

    def __hash__(self) -> int:
        return hash((self.raw, self.streamed))

    @property
    def is_continuation(self) -> bool:
        return self.raw.startswith(b"+")

    def tagged_as(self, tag: bytes) -> bool:
        raw = self.raw
        return raw.startswith(tag) and raw[len(tag) : len(tag) + 1] == b" "

    @property
    def status(self) -> bytes:
        """OK / NO / BAD / BYE / PREAUTH of a status response, upper-cased (b"" otherwise)."""
        parts = self.raw.split(b" ", 2)
        return parts[1].upper() if len(parts) > 1 else b""

    @property
    def kind(self) -> tuple[bytes, int]:
        """(what this response is, its number): (b"EXISTS"|b"EXPUNGE"|b"FETCH", n) for numbered
        untagged responses, (b"STATUS", 0) for a status response (tagged or not),
        (b"VANISHED", 0), or (b"", 0) for anything the view does not follow."""
        kind = self._kind
        if kind is None:
            kind = self._kind = self._classify()
        return kind

    def _classify(self) -> tuple[bytes, int]:
        raw = self.raw
        if raw.startswith(b"+"):
            return b"", 0
        words = raw[:64].split(b" ", 3)
        if len(words) < 2:
            return b"", 0
        second = words[1].rstrip(b"\r\n").upper()
        if second in _STATUS_WORDS:
            return b"STATUS", 0
        if words[0] != b"*":
            return b"", 0
        if second.isdigit() and len(words) > 2:
            third = words[2].rstrip(b"\r\n").upper()
            if third in _VIEW_WORDS:
                return third, int(second)
        elif second == b"VANISHED":
            return b"VANISHED", 0
        return b"", 0

    def code(self, pattern: re.Pattern[bytes]) -> int | None:
        """A response code's number (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) of a status response."""
        if self.kind[0] != b"STATUS":
            return None
        match = pattern.search(self.raw)
        return int(match.group(1)) if match else None

    @property
    def exists(self) -> int | None:
        kind, n = self.kind
        return n if kind == b"EXISTS" and _EXISTS.match(self.raw) else None

    @property
    def expunge(self) -> int | None:
        kind, n = self.kind
        return n if kind == b"EXPUNGE" and _EXPUNGE.match(self.raw) else None

    @property
    def uidvalidity(self) -> int | None:
        return self.code(_UIDVALIDITY)

    @property
    def uidnext(self) -> int | None:
        return self.code(_UIDNEXT)

    @property
    def highestmodseq(self) -> int | None:
        return self.code(_HIGHESTMODSEQ)

    @property
    def fetch(self) -> FetchData | None:
        """UID, FLAGS and MODSEQ of a FETCH response, parsed once however many look."""
        fetch = self._fetch
        if fetch is False:
            fetch = self._fetch = parse_fetch(self.raw) if self.kind[0] == b"FETCH" else None
        assert fetch is not True
        return fetch


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
    if first is None:
        try:
            first = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            pass  # a line longer than the reader's limit: read in pieces below
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("backend closed the connection") from exc
    if first is not None and not first.endswith(b"}\r\n"):
        # Most responses: one line, no literal. Nothing to hold or join.
        if progress is not None:
            progress()
        return Response(first)
    return await _read_with_literals(reader, max_literal, progress, spill, first)


async def _read_with_literals(
    reader: asyncio.StreamReader, max_literal: int, progress: Callable[[], None] | None,
    spill: Spill | None, first: bytes | None,
) -> Response:
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
            # What has arrived, not a whole chunk: every piece is progress (a slow node that
            # keeps sending is not a silent one), and nothing waits to fill a buffer.
            chunk = await reader.read(min(size, LITERAL_CHUNK))
            if not chunk:
                raise ConnectionResetError("backend closed the connection")
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


# The usual FETCH answer after a command (UID, FLAGS, MODSEQ, sizes): one line of items whose
# values are numbers or flat lists, no strings, literals or sections. Read with two regexes;
# anything else takes the item-by-item walk.
_SIMPLE_VALUE = rb"[A-Za-z0-9.]+ (?:\d+|\([^()\"{\[\]\r\n]*\))"
_SIMPLE_FETCH = re.compile(
    rb"\* (\d+) FETCH \(((?:%s(?: %s)*)?)\)\r\n" % (_SIMPLE_VALUE, _SIMPLE_VALUE),
    re.IGNORECASE)
_SIMPLE_ITEM = re.compile(rb"([A-Za-z0-9.]+) (\d+|\([^()]*\))")


def parse_fetch(raw: bytes) -> FetchData | None:
    """UID, FLAGS and MODSEQ of a FETCH response, skipping over literals and strings (a body
    may well contain the text "UID 5"). None when this is no FETCH response or it is garbled."""
    simple = _SIMPLE_FETCH.fullmatch(raw)
    if simple is not None:
        return _simple_fetch(int(simple.group(1)), simple.group(2))
    return walk_fetch(raw)


def walk_fetch(raw: bytes) -> FetchData | None:
    """parse_fetch for any FETCH response: item by item, over strings, lists and literals."""
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
    return _fetch_data(int(match.group(1)), found)


def _simple_fetch(seq: int, items: bytes) -> FetchData | None:
    return _fetch_data(seq, {name.upper(): value for name, value in _SIMPLE_ITEM.findall(items)})


def _fetch_data(seq: int, found: dict[bytes, bytes]) -> FetchData | None:
    uid = found.get(b"UID")
    flags = found.get(b"FLAGS")
    modseq = found.get(b"MODSEQ")
    try:
        return FetchData(
            seq=seq,
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
