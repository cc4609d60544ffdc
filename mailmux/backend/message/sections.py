"""BODY[section] contents (RFC 3501 6.4.5), byte for byte from the original message."""

from __future__ import annotations

from mailmux.backend.message.parsed import Part
from mailmux.protocol.imap.commands import Section


def resolve(msg: Part, numbers: tuple[int, ...]) -> Part | None:
    current = msg
    for n in numbers:
        if current.message is not None and current is not msg:
            current = current.message
        if current.children:
            if n > len(current.children):
                return None
            current = current.children[n - 1]
        elif n != 1:
            return None
    return current


def _header_fields(header: bytes, names: tuple[str, ...], keep: bool) -> bytes:
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    current: list[bytes] = []
    selected = False
    for line in header.splitlines(keepends=True):
        if line.strip() == b"":
            break
        if line[:1] in (b" ", b"\t") and current:
            if selected:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        selected = (name in wanted) == keep
        current = [line]
        if selected:
            out.append(line)
    return b"".join(out) + b"\r\n"


def section_bytes(msg: Part, section: Section) -> bytes:
    part = resolve(msg, section.part) if section.part else msg
    if part is None:
        return b""
    if section.text is None:
        return part.body if section.part else msg.whole
    if section.text == "MIME":
        return part.header
    target = part
    if section.part:
        if part.message is None:
            return b""  # HEADER/TEXT of a part that is not a message/rfc822
        target = part.message
    if section.text == "HEADER":
        return target.header
    if section.text == "TEXT":
        return target.body
    return _header_fields(target.header, section.fields, section.text == "HEADER.FIELDS")
