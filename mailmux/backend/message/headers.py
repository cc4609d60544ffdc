"""Decoding header text for SEARCH (RFC 2047 encoded words) and body text (transfer encodings)."""

from __future__ import annotations

import base64
import binascii
import email.header
import quopri

from mailmux.backend.message.parsed import Part


def decode_header_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (UnicodeDecodeError, LookupError, ValueError, email.errors.HeaderParseError):
        return text


def decoded_content(part: Part) -> bytes:
    data = part.body
    encoding = part.encoding
    try:
        if encoding == "BASE64":
            return base64.b64decode(b"".join(data.split()), validate=False)
        if encoding == "QUOTED-PRINTABLE":
            return quopri.decodestring(data)
    except (binascii.Error, ValueError):
        return data
    return data


def decoded_text(part: Part) -> str:
    charset = part.params.get("charset", "us-ascii")
    data = decoded_content(part)
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def text_parts(part: Part) -> list[Part]:
    if part.children:
        return [p for child in part.children for p in text_parts(child)]
    if part.message is not None:
        return text_parts(part.message)
    return [part] if part.maintype == "text" else []
