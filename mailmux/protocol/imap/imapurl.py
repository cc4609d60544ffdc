"""IMAP URLs (RFC 5092), only as far as CATENATE (RFC 4469) needs them (sans-IO).

A CATENATE URL names one message, or a part of it, in a mailbox of the same user on this
server: `/INBOX;UIDVALIDITY=5/;UID=20/;SECTION=1.2.MIME/;PARTIAL=0.1024`, or the same path
after `imap://user@host`. Anything else a full IMAP URL may hold (a search, a mailbox list,
URLAUTH, another user's mailbox) is refused with `UrlError`, which the server answers as
`NO [BADURL]`. The parser is a single left-to-right pass over at most `MAX_URL` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from mailmux.protocol.imap.commands import Section
from mailmux.protocol.imap.parser import parse_section

MAX_URL = 2048
_SERVER = re.compile(r"^imap://(?:(?P<user>[^@/;]*)(?:;AUTH=[^@/]*)?@)?(?P<host>[^/]*)(?=/)",
                     re.IGNORECASE)
_NUMBER = re.compile(r"^[1-9][0-9]{0,9}$")
_PARTIAL = re.compile(r"^([0-9]{1,10})(?:\.([1-9][0-9]{0,9}))?$")


class UrlError(Exception):
    """The URL is not one this server can resolve for CATENATE."""


@dataclass(frozen=True)
class ImapUrl:
    mailbox: bytes  # percent-decoded; the caller decodes it as a mailbox name
    uid: int
    uidvalidity: int | None = None
    section: bytes | None = None  # percent-decoded section text ("1.2.MIME", "HEADER")
    partial: tuple[int, int | None] | None = None  # (offset, length or None for the rest)
    user: str | None = None  # from imap://user@host; None for a path relative to the server


def _number(value: str, what: str) -> int:
    if _NUMBER.match(value) is None or int(value) > 0xFFFFFFFF:
        raise UrlError(f"invalid {what}")
    return int(value)


def _decoded(value: str) -> bytes:
    # Percent-escapes must be complete: "%4" or "%zz" is malformed, not literal text.
    if re.search(r"%(?![0-9A-Fa-f]{2})", value):
        raise UrlError("bad percent-escape")
    return unquote_to_bytes(value)


def parse_imap_url(url: str) -> ImapUrl:
    if len(url) > MAX_URL:
        raise UrlError("URL too long")
    if not url.isascii() or any(c in url for c in " \t\r\n\x00"):
        raise UrlError("URL holds characters a URL cannot hold")
    user = None
    server = _SERVER.match(url)
    if server is not None:
        user = _decoded(server.group("user")).decode("utf-8", "replace") \
            if server.group("user") else None
        url = url[server.end():]
    elif not url.startswith("/"):
        raise UrlError("not an absolute IMAP URL or path")
    segments = url[1:].split("/")
    head, _, validity = segments[0].partition(";")
    if not head:
        raise UrlError("no mailbox")
    uidvalidity = None
    if validity:
        key, _, value = validity.partition("=")
        if key.upper() != "UIDVALIDITY":
            raise UrlError(f"unsupported mailbox parameter {key[:20]}")
        uidvalidity = _number(value, "UIDVALIDITY")
    fields: dict[str, str] = {}
    for segment in segments[1:]:
        key, eq, value = segment.partition("=")
        key = key.upper()
        if not key.startswith(";") or not eq or key[1:] in fields:
            raise UrlError("malformed URL segment")
        if key not in (";UID", ";SECTION", ";PARTIAL"):
            raise UrlError(f"unsupported URL part {key[1:21]}")
        fields[key[1:]] = value
    if "UID" not in fields:
        raise UrlError("the URL names no message (;UID=)")
    order = [k for k in ("UID", "SECTION", "PARTIAL") if k in fields]
    if list(fields) != order:
        raise UrlError("URL parts out of order")
    partial = None
    if "PARTIAL" in fields:
        match = _PARTIAL.match(fields["PARTIAL"])
        if match is None:
            raise UrlError("invalid PARTIAL")
        partial = (int(match.group(1)), int(match.group(2)) if match.group(2) else None)
    section = _decoded(fields["SECTION"]) if "SECTION" in fields else None
    return ImapUrl(_decoded(head), _number(fields["UID"], "UID"), uidvalidity, section,
                   partial, user)


def section_of(url: ImapUrl) -> Section | None:
    """The URL's section as a FETCH section; None for the whole message."""
    if url.section is None:
        return None
    try:
        return parse_section(url.section)
    except ValueError as exc:
        raise UrlError(f"invalid SECTION: {exc}") from None


def apply_partial(data: bytes, partial: tuple[int, int | None] | None) -> bytes:
    if partial is None:
        return data
    offset, length = partial
    return data[offset:] if length is None else data[offset : offset + length]
