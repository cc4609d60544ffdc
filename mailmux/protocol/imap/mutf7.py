"""Modified UTF-7 for mailbox names (RFC 3501 section 5.1.3)."""

from __future__ import annotations

import base64


def encode_mailbox(name: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mailbox(name: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise ValueError(f"invalid character {ch!r} in a modified UTF-7 name")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i)
        if end < 0:
            raise ValueError("unterminated modified UTF-7 shift")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            if set(b64) - set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
                raise ValueError("invalid base64 in modified UTF-7")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                text = raw.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"invalid modified UTF-7: {exc}") from exc
            if len(raw) % 2 or any(0x20 <= ord(c) <= 0x7E for c in text):
                raise ValueError("modified UTF-7 encodes printable ASCII")
            out.append(text)
        i = end + 1
    return "".join(out)
