"""Which client commands the fast lane may relay, and how it finds whole response lines.

Sans-IO: pure functions over bytes, shared by the lane (`fastlane.py`) and the command loop
(`client.py`), so both read a command's tag and name the same way — a command the lane took
and then handed to the loop must be recognised there as the very same command.
"""

from __future__ import annotations

# Commands that change nothing (not replayable: a failover simply sends them again, and the
# FETCH filter drops what the client already has) and that `remember` does not look at. The
# gateway's own commands (CAPABILITY, ID, COMPRESS, LOGOUT...) are not among them.
FAST_NAMES = frozenset({"NOOP", "FETCH", "SEARCH", "SORT", "THREAD", "STATUS", "LIST", "LSUB",
                        "CHECK"})


def tag_and_name(raw: bytes) -> tuple[bytes | None, str]:
    """(tag, upper-case command name; "FETCH" for "UID FETCH") from a command's first line."""
    first = raw[: raw.find(b"\n") + 1 or len(raw)].split(None, 3)
    if len(first) < 2:
        return None, ""
    name = first[1].upper()
    if name == b"UID" and len(first) > 2:
        name = first[2].upper()
    return first[0], name.decode("ascii", "replace")


def fast_command(line: bytes, max_line: int) -> tuple[bytes, str] | None:
    """(tag, name) when `line` is one whole command the lane may relay as it is: a single
    CRLF-terminated line without literals, of a kind in FAST_NAMES, that asks for no message
    bodies (their literals would hand the command to the loop at once anyway)."""
    if (len(line) > max_line or not line.endswith(b"\r\n") or b"{" in line
            or line.find(b"\n") != len(line) - 1):
        return None
    tag, name = tag_and_name(line)
    if tag is None or name not in FAST_NAMES or tag[:1] in (b"*", b"+"):
        return None
    if name == "FETCH" and _asks_for_bodies(line):
        return None
    return tag, name


def _asks_for_bodies(line: bytes) -> bool:
    upper = line.upper()
    return b"[" in upper or b"BINARY" in upper or b"RFC822" in upper.replace(b"RFC822.SIZE", b"")


def whole_lines(buffer: bytes, start: int) -> int:
    """The end (exclusive) of the last whole line in buffer[start:], or `start` if none."""
    end = buffer.rfind(b"\n", start)
    return start if end < 0 else end + 1


def needs_the_loop(line: bytes) -> bool:
    """A response line the lane leaves to the command loop: one announcing a literal, a
    continuation request, or BYE."""
    return line.endswith(b"}\r\n") or line[:1] == b"+" or line[:5].upper() == b"* BYE"
