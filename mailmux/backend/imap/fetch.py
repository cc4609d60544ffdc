"""Rendering one message's FETCH response items (RFC 3501 7.4.2, RFC 7162 MODSEQ)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

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
    fetch_item_name,
    format_flags,
    format_internaldate,
)

_NEEDS_BODY = frozenset({"BODY[]", "BODY", "BODYSTRUCTURE", "ENVELOPE", "RFC822",
                         "RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"})


def needs_body(attrs: tuple[FetchAttr, ...]) -> bool:
    return any(a.name in _NEEDS_BODY for a in attrs)


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


async def render(
    attrs: tuple[FetchAttr, ...], meta: MessageMeta, load: Callable[[], Awaitable[bytes]],
    *, with_uid: bool, with_modseq: bool,
) -> list[object]:
    items: list[object] = []
    async for name, value in render_items(attrs, meta, load, with_uid=with_uid,
                                          with_modseq=with_modseq):
        items += [name, value]
    return items


async def render_items(
    attrs: tuple[FetchAttr, ...], meta: MessageMeta, load: Callable[[], Awaitable[bytes]],
    *, with_uid: bool, with_modseq: bool,
) -> AsyncIterator[tuple[Atom, object]]:
    """The (name, value) items one at a time, so a caller can send each before the next
    is made: a FETCH of many sections of a big message never exists whole in memory."""
    raw: bytes | None = None
    parsed: Part | None = None
    names = {a.name for a in attrs}
    if with_uid and "UID" not in names:
        yield Atom("UID"), meta.uid
    if with_modseq and "MODSEQ" not in names:
        yield Atom("MODSEQ"), [meta.modseq]
    for attr in attrs:
        if attr.name in _NEEDS_BODY and raw is None:
            raw = await load()
            parsed = ParsedMessage.from_bytes(raw)
        yield Atom(fetch_item_name(attr)), _value(attr, meta, raw, parsed)


def body_items(attrs: tuple[FetchAttr, ...]) -> int:
    """How many items of a FETCH send message content (each can be as big as the message)."""
    return sum(1 for a in attrs if a.name in _NEEDS_BODY)


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
    assert raw is not None and msg is not None
    if name == "ENVELOPE":
        return envelope(msg)
    if name == "BODYSTRUCTURE":
        return bodystructure(msg, extensible=True)
    if name == "BODY":
        return bodystructure(msg, extensible=False)
    if name == "RFC822":
        return Literal(raw)
    if name == "RFC822.HEADER":
        return Literal(msg.header)
    if name == "RFC822.TEXT":
        return Literal(msg.body)
    section = attr.section or Section()
    if name in ("BINARY", "BINARY.SIZE"):
        part = resolve(msg, section.part) if section.part else msg
        if part is None:
            raise FetchError("no such part")
        content = decoded_content(part) if section.part else raw
        if name == "BINARY.SIZE":
            return len(content)
        return Literal(_partial(content, attr.partial))
    return Literal(_partial(section_bytes(msg, section), attr.partial))
