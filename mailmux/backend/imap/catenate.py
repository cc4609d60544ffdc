"""CATENATE (RFC 4469): a message put together from TEXT literals and URLs naming the user's
own messages (or parts of them), before APPEND stores it.

Only the user's own mailboxes are reachable (a URL with another user in it is BADURL), each URL
part is read with the message's body bounded by `max_message_size`, and the growing result is
checked against the same limit after every part, so no URL chain can build more than one
message's worth of bytes. Parsing a message to find a section runs in a worker thread.
"""

from __future__ import annotations

import asyncio

from mailmux.backend.errors import ClientError, MailboxNotFound
from mailmux.backend.message.parsed import ParsedMessage
from mailmux.backend.message.sections import resolve, section_bytes
from mailmux.backend.store.interface import MailStore
from mailmux.protocol.imap.commands import CatenatePart, Section
from mailmux.protocol.imap.imapurl import UrlError, apply_partial, parse_imap_url, section_of
from mailmux.protocol.imap.mutf7 import decode_mailbox


class BadUrl(ClientError):
    """A CATENATE URL this server cannot resolve (RFC 4469 BADURL)."""

    def __init__(self, url: str, reason: str) -> None:
        # url-resp-text may hold no "]" nor control characters
        shown = "".join(c for c in url[:200] if 0x20 < ord(c) < 0x7F and c != "]")
        super().__init__(f"bad URL: {reason}", code=f"BADURL {shown}" if shown else "BADURL")


class TooBig(ClientError):
    """The catenated message is larger than the server accepts"""

    imap_code = "TOOBIG"


def _mailbox_name(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
        if name.isascii():
            name = decode_mailbox(name)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UrlError("invalid mailbox name") from exc
    return "INBOX" if name.upper() == "INBOX" else name


def _part_bytes(raw: bytes, section: Section) -> bytes:
    message = ParsedMessage.from_bytes(raw)
    if section.part and resolve(message, section.part) is None:
        raise UrlError("no such part")
    return section_bytes(message, section)


async def url_bytes(store: MailStore, user: str, text: str) -> bytes:
    """The bytes a CATENATE URL names; UrlError when it names nothing of this user's."""
    url = parse_imap_url(text)
    if url.user is not None and url.user.lower() != user.lower():
        raise UrlError("another user's mailbox")
    try:
        info = await store.get_mailbox(user, _mailbox_name(url.mailbox))
    except MailboxNotFound as exc:
        raise UrlError("no such mailbox") from exc
    if url.uidvalidity is not None and url.uidvalidity != info.uidvalidity:
        raise UrlError("UIDVALIDITY does not match")
    rows = await store.fetch_rows(user, info.id, [url.uid], with_body=True)
    if not rows or rows[0][1] is None:
        raise UrlError("no such message")
    raw = rows[0][1]
    section = section_of(url)
    if section is not None:
        raw = await asyncio.to_thread(_part_bytes, raw, section)
    return apply_partial(raw, url.partial)


async def assemble(store: MailStore, user: str, parts: tuple[CatenatePart, ...],
                   limit: int) -> bytes:
    """One catenated message; BadUrl or TooBig when it cannot be made."""
    out = bytearray()
    for part in parts:
        if part.text is not None:
            piece = part.text
        else:
            assert part.url is not None
            try:
                piece = await url_bytes(store, user, part.url)
            except UrlError as exc:
                raise BadUrl(part.url, str(exc)) from None
        if len(out) + len(piece) > limit:
            raise TooBig("catenated message too large")
        out += piece
    return bytes(out)
