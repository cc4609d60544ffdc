"""A message's MIME structure as byte offsets into the original bytes (RFC 2045/2046).

IMAP reports exact octet sizes and line counts of parts and returns sections byte for byte, so
the structure is found by scanning the raw bytes (header/body split, multipart boundaries,
message/rfc822 encapsulation) rather than by re-serialising a parsed `email` object. Broken input
(missing end boundary, LF-only lines, no blank line, 8-bit headers) is tolerated: any bytes give
some structure and never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

MAX_DEPTH = 20
_PARAM = re.compile(r'''\s*;\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)''')


def _split_header(raw: bytes, start: int, end: int) -> int:
    """Offset where the body starts (just after the blank line), or `end` if there is none."""
    if raw.startswith(b"\r\n", start) and start + 2 <= end:
        return start + 2
    if raw.startswith(b"\n", start) and start + 1 <= end:
        return start + 1
    crlf = raw.find(b"\n\r\n", start, end)
    lf = raw.find(b"\n\n", start, end)
    found = [p for p in ((crlf, 3), (lf, 2)) if p[0] >= 0]
    if not found:
        return end
    pos, length = min(found)
    return pos + length


def unfold(value: bytes) -> bytes:
    return re.sub(rb"\r?\n[ \t]", b" ", value).strip()


def parse_fields(header: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, raw unfolded value) of each header field, in order."""
    fields: list[tuple[str, bytes]] = []
    for line in re.split(rb"\r?\n(?![ \t])", header):
        name, colon, value = line.partition(b":")
        if colon and name and not name[:1].isspace():
            fields.append((name.strip().decode("ascii", "replace").lower(), unfold(value)))
    return fields


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """'text/plain; charset="utf-8"' → ('text/plain', {'charset': 'utf-8'}); RFC 2231 joined."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    continued: dict[str, dict[int, str]] = {}
    for match in _PARAM.finditer(";" + rest):
        key = match.group(1).lower()
        raw_value = match.group(2).strip()
        if raw_value.startswith('"') and raw_value.endswith('"') and len(raw_value) >= 2:
            raw_value = re.sub(r"\\(.)", r"\1", raw_value[1:-1])
        if "*" in key:
            base, _, index = key.partition("*")
            number = index.rstrip("*")
            if number.isdigit():
                continued.setdefault(base, {})[int(number)] = raw_value
                continue
            key = base
        params.setdefault(key, raw_value)
    for base, pieces in continued.items():
        params.setdefault(base, "".join(pieces[i] for i in sorted(pieces)))
    return main.strip(), params


@dataclass
class Part:
    raw: bytes
    start: int
    body_start: int
    end: int
    depth: int = 0
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the encapsulated message of a message/rfc822 part

    @classmethod
    def parse(cls, raw: bytes, start: int, end: int, depth: int = 0,
              default_type: str = "text/plain") -> Part:
        part = cls(raw, start, _split_header(raw, start, end), end, depth)
        part._default_type = default_type
        if depth < MAX_DEPTH:
            if part.maintype == "multipart":
                part.children = part._split_multipart()
            elif (part.maintype, part.subtype) == ("message", "rfc822"):
                part.message = cls.parse(raw, part.body_start, end, depth + 1)
        return part

    _default_type: str = "text/plain"

    # bytes ----------------------------------------------------------------------------------

    @property
    def header(self) -> bytes:
        return self.raw[self.start : self.body_start]

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start : self.end]

    @property
    def whole(self) -> bytes:
        return self.raw[self.start : self.end]

    @property
    def size(self) -> int:
        return self.end - self.body_start

    @property
    def lines(self) -> int:
        # A part's last line ends where the boundary's CRLF begins: count it too.
        count = self.raw.count(b"\n", self.body_start, self.end)
        unterminated = self.end > self.body_start and self.raw[self.end - 1 : self.end] != b"\n"
        return count + unterminated

    # header ---------------------------------------------------------------------------------

    @cached_property
    def fields(self) -> list[tuple[str, bytes]]:
        return parse_fields(self.header)

    def get(self, name: str) -> bytes | None:
        name = name.lower()
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def text(self, name: str) -> str | None:
        value = self.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    @cached_property
    def content_type(self) -> tuple[str, str, dict[str, str]]:
        value = self.text("content-type")
        main, params = parse_params(value) if value else ("", {})
        maintype, slash, subtype = main.partition("/")
        if not slash or not maintype.strip() or not subtype.strip():
            maintype, _, subtype = self._default_type.partition("/")
        maintype, subtype = maintype.strip().lower(), subtype.strip().lower()
        if maintype == "text" and "charset" not in params:
            params = {"charset": "us-ascii", **params}  # RFC 2045 5.2 default
        return maintype, subtype, params

    @property
    def maintype(self) -> str:
        return self.content_type[0]

    @property
    def subtype(self) -> str:
        return self.content_type[1]

    @property
    def params(self) -> dict[str, str]:
        return self.content_type[2]

    @property
    def encoding(self) -> str:
        value = self.text("content-transfer-encoding")
        return value.strip().upper() if value and value.strip() else "7BIT"

    # multipart ------------------------------------------------------------------------------

    def _split_multipart(self) -> list[Part]:
        boundary = self.params.get("boundary")
        if not boundary:
            return []
        delimiter = b"--" + boundary.encode("utf-8", "replace")
        raw, pos, end = self.raw, self.body_start, self.end
        child_type = "message/rfc822" if self.subtype == "digest" else "text/plain"
        children: list[Part] = []
        part_start: int | None = None
        while True:
            found = raw.find(delimiter, pos, end)
            if found < 0:
                break
            at_line_start = found == self.body_start or raw[found - 1 : found] == b"\n"
            after = found + len(delimiter)
            line_end = raw.find(b"\n", after, end)
            line_end = end if line_end < 0 else line_end + 1
            tail = raw[after:line_end]
            closing = tail.startswith(b"--")
            if not at_line_start or tail.strip(b" \t\r\n-") != b"":
                pos = after
                continue
            if part_start is not None:
                content_end = found
                if raw[content_end - 2 : content_end] == b"\r\n":
                    content_end -= 2
                elif raw[content_end - 1 : content_end] == b"\n":
                    content_end -= 1
                children.append(Part.parse(raw, part_start, max(part_start, content_end),
                                           self.depth + 1, child_type))
            if closing:
                return children
            part_start = line_end
            pos = line_end
        if part_start is not None and part_start < end:  # no closing delimiter: take the rest
            children.append(Part.parse(raw, part_start, end, self.depth + 1, child_type))
        return children


class ParsedMessage(Part):
    @classmethod
    def from_bytes(cls, body: bytes) -> Part:
        return Part.parse(body, 0, len(body))
