"""The gateway-only `XREPLAY <id>` command prefix (sans-IO).

`a1 XREPLAY g3f9c2e1-17 APPEND INBOX {12+}` is `a1 APPEND INBOX {12+}` that the gateway marks
with a replay id, so that a node which already holds the effect of that id answers what the
original answered instead of doing it again. The prefix is split off before the command is
parsed, so no command grammar knows about it. Ids are atoms of letters, digits, `-`, `.`, `_`,
at most 64 characters.
"""

from __future__ import annotations

from mailmux.protocol.imap.errors import ParseError

PREFIX = b"XREPLAY"
MAX_ID = 64
_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def split_replay(raw: bytes) -> tuple[bytes, str | None]:
    """(the command without the prefix, the replay id) or (raw, None) if there is none."""
    tag, sp, rest = raw.partition(b" ")
    if not sp or rest[: len(PREFIX) + 1].upper() != PREFIX + b" ":
        return raw, None
    replay_id, sp, command = rest[len(PREFIX) + 1:].partition(b" ")
    tag_text = tag.decode("ascii", "replace")
    if not sp or not command:
        raise ParseError(tag_text, "XREPLAY needs an id and a command", "CLIENTBUG")
    if not 0 < len(replay_id) <= MAX_ID or not set(replay_id) <= _ID_CHARS:
        raise ParseError(tag_text, "invalid XREPLAY id", "CLIENTBUG")
    return tag + b" " + command, replay_id.decode("ascii")
