"""Serializing IMAP responses: a small value model turned into bytes (sans-IO).

Values: None → NIL, int → number, `Atom` → verbatim, str/bytes → a quoted string when it is short
printable 7-bit text, otherwise a literal (8-bit safe), `Literal` → always a literal,
list/tuple → a parenthesised list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from mailmux.protocol.imap.commands import FetchAttr, Section

MAX_QUOTED = 1000


class Atom(str):
    """Emitted verbatim (flags, keywords, NIL-free atoms, pre-formatted items)."""


class Literal(bytes):
    """Always sent as a {n} literal."""


class Literal8(bytes):
    """BINARY content (RFC 3516): a ~{n} literal when it holds a NUL, else a {n} literal."""


class Adjacent(list[object]):
    """Values written one after another with no separator: the "1*body" of a multipart
    BODYSTRUCTURE is `(...)(...)`, not `(...) (...)` (RFC 3501 body-type-mpart)."""


Value = object


def _quotable(data: bytes) -> bool:
    return len(data) < MAX_QUOTED and all(0x20 <= b < 0x7F for b in data)


def quote(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def encode_value(value: Value) -> bytes:
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("booleans have no IMAP encoding")
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, Atom):
        return value.encode()
    if isinstance(value, Literal):
        return b"{%d}\r\n" % len(value) + bytes(value)
    if isinstance(value, Literal8):
        prefix = b"~" if bytes(value).find(0) >= 0 else b""
        return prefix + b"{%d}\r\n" % len(value) + bytes(value)
    if isinstance(value, str | bytes):
        data = value.encode() if isinstance(value, str) else value
        if _quotable(data):
            return quote(data)
        return b"{%d}\r\n" % len(data) + data
    if isinstance(value, Adjacent):
        return b"".join(encode_value(v) for v in value)
    if isinstance(value, list | tuple):
        return b"(" + b" ".join(encode_value(v) for v in value) + b")"
    raise TypeError(f"cannot encode {type(value).__name__} as IMAP")


def untagged(*values: Value) -> bytes:
    return b"* " + b" ".join(encode_value(v) for v in values) + b"\r\n"


def _status_line(prefix: str, status: str, text: str, code: str | None) -> bytes:
    code_part = f"[{code}] " if code else ""
    safe = text.replace("\r", " ").replace("\n", " ")
    return f"{prefix} {status} {code_part}{safe}\r\n".encode()


def untagged_status(status: str, text: str, code: str | None = None) -> bytes:
    return _status_line("*", status, text, code)


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    return _status_line(tag, status, text, code)


def continuation(text: str = "") -> bytes:
    return f"+ {text}\r\n".encode()


def format_flags(flags: Iterable[str]) -> list[Atom]:
    return [Atom(f) for f in sorted(flags)]


def format_internaldate(moment: datetime) -> str:
    return moment.strftime("%d-%b-%Y %H:%M:%S %z")


def format_sequence_set(numbers: Sequence[int]) -> str:
    """Sorted, de-duplicated numbers as compact ranges: [1,2,3,5] → "1:3,5"."""
    parts: list[str] = []
    ordered = sorted(set(numbers))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def section_name(section: Section) -> str:
    parts = [".".join(str(p) for p in section.part)] if section.part else []
    if section.text:
        parts.append(section.text)
    name = ".".join(parts)
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        name += " (" + " ".join(section.fields) + ")"
    return name


def fetch_item_name(attr: FetchAttr) -> str:
    """The key of a FETCH response item; PEEK is dropped and a partial shows its origin."""
    if attr.section is None:
        return attr.name
    base = "BINARY" if attr.name.startswith("BINARY") else "BODY"
    if attr.name == "BINARY.SIZE":
        base = "BINARY.SIZE"
    name = f"{base}[{section_name(attr.section)}]"
    if attr.partial is not None:
        name += f"<{attr.partial[0]}>"
    return name
