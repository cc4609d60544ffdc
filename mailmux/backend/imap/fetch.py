"""Rendering one message's FETCH response items (RFC 3501 7.4.2, RFC 7162 MODSEQ)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator

from mailmux.backend.message.bodystructure import bodystructure
from mailmux.backend.message.envelope import envelope
from mailmux.backend.message.headers import decoded_content
from mailmux.backend.message.parsed import ParsedMessage, Part
from mailmux.backend.message.sections import resolve, section_bytes
from mailmux.backend.store.interface import MessageMeta
from mailmux.protocol.imap.commands import FetchAttr, Section
from mailmux.protocol.imap.response import (
    Atom,
    Literal,
    Literal8,
    fetch_item_name,
    format_flags,
    format_internaldate,
)

_NEEDS_BODY = frozenset({"BODY[]", "BODY", "BODYSTRUCTURE", "ENVELOPE", "RFC822",
                         "RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"})


def needs_body(attrs: tuple[FetchAttr, ...]) -> bool:
    return any(a.name in _NEEDS_BODY for a in attrs)


_LIGHT = frozenset({"FLAGS", "UID", "MODSEQ"})


@functools.lru_cache(maxsize=256)  # a client sends the same few item lists again and again
def light_template(attrs: tuple[FetchAttr, ...], *, with_uid: bool,
                   with_modseq: bool) -> tuple[str, tuple[str, ...]] | None:
    """For FETCHes of nothing but FLAGS, UID and MODSEQ (what clients send for every folder
    sync, over every message): a %-format for one response line and the row fields it takes,
    in order, from ("seq", "uid", "flags", "modseq"). The same bytes `render` would make, in
    a fraction of the time. None for any other FETCH."""
    names = [a.name for a in attrs]
    if not set(names) <= _LIGHT:
        return None
    parts = {"FLAGS": ("FLAGS (%s)", "flags"), "UID": ("UID %d", "uid"),
             "MODSEQ": ("MODSEQ (%d)", "modseq")}
    items = []
    if with_uid and "UID" not in names:
        items.append(parts["UID"])
    if with_modseq and "MODSEQ" not in names:
        items.append(parts["MODSEQ"])
    items += [parts[n] for n in names]
    line = "* %d FETCH (" + " ".join(i[0] for i in items) + ")\r\n"
    return line, ("seq", *(i[1] for i in items))


def sets_seen(attrs: tuple[FetchAttr, ...]) -> bool:
    return any((a.name in ("BODY[]", "BINARY") and not a.peek) or a.name in ("RFC822",
               "RFC822.TEXT") for a in attrs)


def _partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    offset, count = partial
    return data[offset : offset + count]


class FetchError(Exception):
    pass


def render(
    attrs: tuple[FetchAttr, ...], meta: MessageMeta, raw: bytes | None,
    *, with_uid: bool, with_modseq: bool,
) -> list[object]:
    """One message's FETCH items; `raw` is its body when `needs_body(attrs)`. The message is
    parsed only for items that look inside it: the whole BODY[] or RFC822 is sent as stored."""
    items: list[object] = []
    for name, value in render_items(attrs, meta, raw, with_uid=with_uid,
                                    with_modseq=with_modseq):
        items += [name, value]
    return items


def render_items(
    attrs: tuple[FetchAttr, ...], meta: MessageMeta, raw: bytes | None,
    *, with_uid: bool, with_modseq: bool,
) -> Iterator[tuple[Atom, object]]:
    """The (name, value) items one at a time, so a caller can send each before the next is
    made: a FETCH of many sections of a big message never exists whole in memory."""
    parsed: Part | None = None
    names = {a.name for a in attrs}
    if with_uid and "UID" not in names:
        yield Atom("UID"), meta.uid
    if with_modseq and "MODSEQ" not in names:
        yield Atom("MODSEQ"), [meta.modseq]
    for attr in attrs:
        if raw is not None and parsed is None and not _whole(attr):
            parsed = ParsedMessage.from_bytes(raw)
        yield Atom(fetch_item_name(attr)), _value(attr, meta, raw, parsed)


def body_items(attrs: tuple[FetchAttr, ...]) -> int:
    """How many items of a FETCH send message content (each can be as big as the message)."""
    return sum(1 for a in attrs if a.name in _NEEDS_BODY)


def needs_parse(attrs: tuple[FetchAttr, ...]) -> bool:
    """Whether rendering looks inside the message (a section, ENVELOPE, BODYSTRUCTURE...);
    a FETCH of whole bodies and plain attributes is only copying."""
    return not all(_whole(a) for a in attrs)


def _whole(attr: FetchAttr) -> bool:
    """Items that are the stored bytes themselves (no header/body split needed)."""
    if attr.name in ("RFC822", "FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"):
        return True
    section = attr.section
    return attr.name in ("BODY[]", "BINARY") and (
        section is None or (not section.part and section.text is None))


def _value(attr: FetchAttr, meta: MessageMeta, raw: bytes | None, msg: Part | None) -> object:
    name = attr.name
    if name == "FLAGS":
        return format_flags(meta.flags)
    if name == "UID":
        return meta.uid
    if name == "INTERNALDATE":
        return format_internaldate(meta.internaldate)
    if name == "RFC822.SIZE":
        return meta.size
    if name == "MODSEQ":
        return [meta.modseq]
    assert raw is not None
    if name == "RFC822":
        return Literal(raw)
    section = attr.section or Section()
    if name in ("BODY[]", "BINARY") and not section.part and section.text is None:
        return Literal(_partial(raw, attr.partial))
    assert msg is not None
    if name == "ENVELOPE":
        return envelope(msg)
    if name == "BODYSTRUCTURE":
        return bodystructure(msg, extensible=True)
    if name == "BODY":
        return bodystructure(msg, extensible=False)
    if name == "RFC822.HEADER":
        return Literal(msg.header)
    if name == "RFC822.TEXT":
        return Literal(msg.body)
    if name in ("BINARY", "BINARY.SIZE"):
        part = resolve(msg, section.part) if section.part else msg
        if part is None:
            raise FetchError("no such part")
        content = decoded_content(part) if section.part else raw
        if name == "BINARY.SIZE":
            return len(content)
        return Literal8(_partial(content, attr.partial))
    content = section_bytes(msg, section)
    if section.part and section.text is None and content.find(0) >= 0:
        # RFC 3516 4.3: NUL never goes out in a BODY literal; a binary part (APPENDed with
        # a literal8) is sent base64-encoded instead, as Dovecot does
        content = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return Literal(_partial(content, attr.partial))
