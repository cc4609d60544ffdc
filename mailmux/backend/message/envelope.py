"""ENVELOPE (RFC 3501 7.4.2): header fields as IMAP values; encoded words are left encoded."""

from __future__ import annotations

import email.utils
import re

from mailmux.backend.message.parsed import Part

_GROUP = re.compile(r'^\s*([^:<>"@,]+):(.*);\s*$', re.DOTALL)

Address = list[str | None]


def _addresses(text: str) -> list[Address]:
    out: list[Address] = []
    for name, address in email.utils.getaddresses([text]):
        if not address and not name:
            continue
        mailbox, at, host = address.rpartition("@")
        if not at:
            mailbox, host = address, ""
        out.append([name or None, None, mailbox or None, host or None])
    return out


def address_list(part: Part, name: str) -> list[Address] | None:
    raw = part.get(name)
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    group = _GROUP.match(text)
    if group is not None:
        inner = _addresses(group.group(2))
        return [[None, None, group.group(1).strip(), None], *inner, [None, None, None, None]]
    return _addresses(text) or None


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
