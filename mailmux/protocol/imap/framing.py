"""Incremental framing of an IMAP byte stream into whole commands (sans-IO, h11 style).

Feed bytes with `receive_data`, then call `next_event` until it returns `NeedData`. A command is
its first line plus, for every line ending in a literal announcement (`{n}`, `{n+}`, `~{n}`,
`~{n+}`), exactly n octets and the next line. For a synchronising literal the framer returns
`LiteralContinue` first: the server must answer "+ " before the client sends the octets.

Memory stays bounded: a line longer than `max_line` is discarded as it arrives (up to its CRLF)
and reported once; a synchronising literal over `max_literal` is refused before the client sends
it (`TOOBIG`); a non-synchronising one over the limit is already on its way and cannot be skipped
safely without reading it, so it is fatal: the caller closes the connection. `max_command`
bounds one whole command — every line and literal together — so that chaining many small
literals (`a NOOP {8000+}` … ` {8000+}` …) cannot grow a process either; a command that would
pass it is refused the same way as an oversized literal.

`ResponseFramer` does the same for server responses (the gateway relays them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LITERAL = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r?\n$")
# Public so the gateway rewrites exactly the literals this framer saw, never other braces.
LITERAL_ANNOUNCEMENT = _LITERAL
_TAG = re.compile(rb"^([\x21-\x7e]+?)[ \r\n]")


@dataclass(frozen=True)
class NeedData:
    pass


@dataclass(frozen=True)
class LiteralContinue:
    size: int


@dataclass(frozen=True)
class CommandBytes:
    raw: bytes


@dataclass(frozen=True)
class FramingError:
    tag: str | None
    message: str
    code: str | None
    fatal: bool


Event = NeedData | LiteralContinue | CommandBytes | FramingError


def _tag_of(first_line: bytes) -> str | None:
    match = _TAG.match(first_line)
    if match is None:
        return None
    tag = match.group(1)
    if tag in (b"*", b"+") or any(c in b'(){%"\\]' for c in tag):
        return None
    return tag.decode("ascii")


class CommandFramer:
    def __init__(self, max_line: int = 64 * 1024, max_literal: int = 50 * 1024 * 1024,
                 max_command: int | None = None) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command  # None: max_line + max_literal + a little per line
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no LF
        self._parts: list[bytes] = []
        self._size = 0  # bytes in _parts
        self._literal = 0  # octets of literal still expected
        self._discarding = False  # inside an over-long line, dropping bytes up to LF
        self._discard_tag: str | None = None
        self._closed = False

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def peek_buffered(self) -> bytes:
        """Bytes received but not yet returned as a command (a command framed in part, then
        whatever follows it), left where they are."""
        return b"".join(self._parts) + bytes(self._buffer)

    def take_buffered(self) -> bytes:
        """Bytes received but not yet framed, removed (a stream switching to compression
        after a command hands them to its decompressor)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return data

    def _add_part(self, part: bytes) -> None:
        self._parts.append(part)
        self._size += len(part)

    def _clear_parts(self) -> None:
        self._parts.clear()
        self._size = 0

    @property
    def command_limit(self) -> int:
        if self.max_command is not None:
            return self.max_command
        return self.max_line + self.max_literal + 1024

    @property
    def in_command(self) -> bool:
        """True while a command is partly received (a disconnect now loses it, by design)."""
        return bool(self._parts) or self._literal > 0 or bool(self._buffer)

    def next_event(self) -> Event:
        if self._closed:
            return NeedData()
        while True:
            if self._literal:
                if len(self._buffer) < self._literal:
                    return NeedData()
                self._add_part(bytes(self._buffer[: self._literal]))
                del self._buffer[: self._literal]
                self._literal = 0
                self._scanned = 0
            if self._discarding:
                end = self._buffer.find(b"\n")
                if end < 0:
                    self._buffer.clear()
                    return NeedData()
                del self._buffer[: end + 1]
                self._discarding = False
                self._clear_parts()
                return FramingError(self._discard_tag, "line too long", "TOOBIG", False)
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                if len(self._buffer) > self.max_line:
                    first = self._parts[0] if self._parts else bytes(self._buffer[:200])
                    self._discard_tag = _tag_of(first)
                    self._discarding = True
                    self._scanned = 0
                    continue
                self._scanned = len(self._buffer)
                return NeedData()
            if end + 1 > self.max_line + 2:
                first = self._parts[0] if self._parts else bytes(self._buffer[:200])
                del self._buffer[: end + 1]
                self._scanned = 0
                self._clear_parts()
                return FramingError(_tag_of(first), "line too long", "TOOBIG", False)
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            self._scanned = 0
            self._add_part(line)
            match = _LITERAL.search(line)
            if match is None:
                raw = b"".join(self._parts)
                self._clear_parts()
                return CommandBytes(raw)
            size = int(match.group(2))
            synchronising = not match.group(3)
            so_far = self._size
            too_big = (f"literal of {size} octets is too big" if size > self.max_literal
                       else "command is too big" if so_far + size > self.command_limit
                       else None)
            if too_big is not None:
                tag = _tag_of(self._parts[0])
                self._clear_parts()
                if synchronising:
                    return FramingError(tag, too_big, "TOOBIG", False)
                self._closed = True
                return FramingError(tag, too_big, "TOOBIG", True)
            self._literal = size
            if synchronising:
                if size == 0:
                    return LiteralContinue(0)
                return LiteralContinue(size)


@dataclass(frozen=True)
class ResponseBytes:
    raw: bytes
    kind: str  # "tagged", "untagged" or "continuation"
    tag: str | None


class ResponseFramer:
    """Frames server responses (lines with literals inside, e.g. FETCH bodies)."""

    def __init__(self, max_line: int = 1024 * 1024, max_literal: int = 1 << 31) -> None:
        self._framer = CommandFramer(max_line, max_literal)

    def receive_data(self, data: bytes) -> None:
        self._framer.receive_data(data)

    def next_event(self) -> NeedData | ResponseBytes | FramingError:
        while True:
            event = self._framer.next_event()
            if isinstance(event, LiteralContinue):
                continue  # servers never wait for a continuation
            if not isinstance(event, CommandBytes):
                return event
            raw = event.raw
            if raw.startswith(b"+"):
                return ResponseBytes(raw, "continuation", None)
            if raw.startswith(b"* "):
                return ResponseBytes(raw, "untagged", None)
            return ResponseBytes(raw, "tagged", _tag_of(raw))
