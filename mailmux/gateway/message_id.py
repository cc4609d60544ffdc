"""The pool-wide GUID the gateway stamps on what it submits.

The GUID is derived from the authenticated user and the exact message bytes, so the same message
submitted again (our own retry on another node after a failure, or the client's retry after a
451) carries the same GUID and every backend keeps one copy. Any `X-Mailmux-GUID` the client put
in the header is removed first, and the stamp is signed with the pool secret: only the gateway
may name a message, otherwise a sender could make a mailbox drop a message by reusing a GUID.
"""

from __future__ import annotations

import hashlib

from mailmux.protocol.guid import sign

GUID_HEADER = b"X-Mailmux-GUID"


def _is_guid_field(line: bytes) -> bool:
    name, colon, _ = line.partition(b":")
    return bool(colon) and name.strip().lower() == GUID_HEADER.lower()


def strip_guid_header(message: bytes) -> bytes:
    """The message without any X-Mailmux-GUID field (continuation lines included)."""
    out: list[bytes] = []
    lines = message.splitlines(keepends=True)
    dropping = False
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            out.extend(lines[index:])
            return b"".join(out)
        if dropping and line[:1] in (b" ", b"\t"):
            continue
        dropping = _is_guid_field(line)
        if not dropping:
            out.append(line)
    return b"".join(out)


def stamp(user: str, message: bytes, secret: bytes) -> tuple[str, bytes]:
    """(guid, message with exactly one X-Mailmux-GUID field at the top, signed for the pool)."""
    clean = strip_guid_header(message)
    guid = hashlib.sha256(user.lower().encode() + b"\0" + clean).hexdigest()[:32]
    return guid, GUID_HEADER + b": " + sign(guid, secret).encode() + b"\r\n" + clean
