"""ENVELOPE (RFC 3501 7.4.2): header fields as IMAP values; encoded words are left encoded.

Groups and source routes are kept (see addresses.py)."""

from __future__ import annotations

from mailmux.backend.message.addresses import parse_addresses
from mailmux.backend.message.parsed import Part

Address = list[str | None]


def address_list(part: Part, name: str) -> list[Address] | None:
    raw = part.get(name)
    if raw is None:
        return None
    return [a.as_list() for a in parse_addresses(raw.decode("utf-8", "replace"))] or None


def envelope(msg: Part) -> list[object]:
    def text(name: str) -> str | None:
        return msg.text(name)

    sender = address_list(msg, "from")
    return [
        text("date"),
        text("subject"),
        sender,
        address_list(msg, "sender") or sender,
        address_list(msg, "reply-to") or sender,
        address_list(msg, "to"),
        address_list(msg, "cc"),
        address_list(msg, "bcc"),
        text("in-reply-to"),
        text("message-id"),
    ]
