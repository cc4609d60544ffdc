"""How many durable copies a message needs before it is acknowledged, from its own headers.

`Importance: high` or `X-Priority: 1|2` → high; `Precedence: bulk|list|junk` → bulk; else normal.
A message that says both is treated as high: losing an urgent message costs more than an extra
copy of a newsletter. Pure functions over the header bytes.
"""

from __future__ import annotations

from mailmux.backend.config import CopiesConfig

HIGH, NORMAL, BULK = "high", "normal", "bulk"


def _fields(message: bytes) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = {}
    last: bytes | None = None
    for raw in message.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t") and last is not None:
            fields[last] += b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        if colon:
            last = name.strip().lower()
            fields.setdefault(last, value.strip())
    return fields


def importance(message: bytes) -> str:
    fields = _fields(message)
    if fields.get(b"importance", b"").lower() == b"high":
        return HIGH
    priority = fields.get(b"x-priority", b"").strip()
    if priority[:1] in (b"1", b"2"):
        return HIGH
    if fields.get(b"precedence", b"").lower() in (b"bulk", b"list", b"junk"):
        return BULK
    return NORMAL


def copies_required(message: bytes, copies: CopiesConfig, live_nodes: int) -> int:
    """Durable copies (this node included) needed before 250 / APPEND OK."""
    level = importance(message)
    wanted = {HIGH: copies.high, NORMAL: copies.normal, BULK: copies.bulk}[level]
    return live_nodes if wanted is None else wanted
