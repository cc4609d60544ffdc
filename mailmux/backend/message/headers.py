"""Decoding header text for SEARCH (RFC 2047 encoded words) and body text (transfer encodings)."""

from __future__ import annotations

import base64
import binascii
import email.header
import quopri
import re

from mailmux.backend.message.parsed import Part


def decode_header_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (UnicodeDecodeError, LookupError, ValueError, email.errors.HeaderParseError):
        return text


_TRAILING_SPACE = re.compile(rb"[ \t]+(\r?\n|$)")


def decoded_content(part: Part) -> bytes:
    data = part.body
    encoding = part.encoding
    try:
        if encoding == "BASE64":
            return base64.b64decode(b"".join(data.split()), validate=False)
        if encoding == "QUOTED-PRINTABLE":
            # RFC 2045 6.7 (3): whitespace at the end of an encoded line is padding, so "= \t"
            # before the line break is still a soft break
            return quopri.decodestring(_TRAILING_SPACE.sub(rb"\1", data))
    except (binascii.Error, ValueError):
        return data
    return data


def decoded_text(part: Part) -> str:
    data = decoded_content(part)
    # The declared charset first; mail that lies about it (8-bit text labelled us-ascii, or
    # no label at all) is usually UTF-8, and latin-1 decodes anything.
    for charset in (part.params.get("charset", "us-ascii"), "utf-8", "latin-1"):
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")  # pragma: no cover - latin-1 never fails


def text_parts(part: Part) -> list[Part]:
    if part.children:
        return [p for child in part.children for p in text_parts(child)]
    if part.message is not None:
        return text_parts(part.message)
    return [part] if part.maintype == "text" else []
