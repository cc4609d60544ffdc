"""Client-supplied `X-Mailmux-GUID` header fields, removed before submission.

Replays are recognised by replay id (`XREPLAY=`), never by a header: such a field means
nothing to the pool, and removing it keeps old pool-internal names out of stored copies.
"""

from __future__ import annotations

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
