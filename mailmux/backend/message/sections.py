"""BODY[section] contents (RFC 3501 6.4.5), byte for byte from the original message."""

from __future__ import annotations

from mailmux.backend.message.parsed import Part
from mailmux.protocol.imap.commands import Section


def resolve(msg: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part a section number names (RFC 3501 6.4.5).

    Each number picks a child of a multipart; in a non-multipart, 1 names the body itself.
    After the first step, a message/rfc822 part is entered first: its numbers count the parts
    of the encapsulated message (so `1.1` of a message whose body is one message/rfc822 is
    the embedded message's body, and `1.2.MIME` the second part's header inside it).
    """
    current = msg
    for step, n in enumerate(numbers):
        container = current
        if step and current.message is not None:
            container = current.message
        if container.children:
            if n > len(container.children):
                return None
            current = container.children[n - 1]
        elif n == 1:
            current = container
        else:
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
