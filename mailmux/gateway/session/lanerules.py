"""Which client commands the fast lane may relay, and how it finds whole response lines.

Sans-IO: pure functions over bytes, shared by the lane (`fastlane.py`) and the command loop
(`client.py`), so both read a command's tag and name the same way — a command the lane took
and then handed to the loop must be recognised there as the very same command.
"""

from __future__ import annotations

import re

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
    CRLF-terminated line without literals, of a kind in FAST_NAMES."""
    if (len(line) > max_line or not line.endswith(b"\r\n") or b"{" in line
            or line.find(b"\n") != len(line) - 1):
        return None
    tag, name = tag_and_name(line)
    if tag is None or name not in FAST_NAMES or tag[:1] in (b"*", b"+"):
        return None
    return tag, name


class Classifier:
    """`fast_command` with its verdicts remembered per command text after the tag: a client
    asks the same few things over and over under ever new tags, so a verdict costs a split
    and a dictionary look-up. Only plain alphanumeric tags take the shortcut (others would
    need the whitespace rules of `tag_and_name`)."""

    SIZE = 256

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.known: dict[bytes, tuple[str, bool] | None] = {}

    def __call__(self, line: bytes) -> tuple[bytes, str, bool] | None:
        """(tag, name, UID form) of a command the lane may relay; None otherwise."""
        space = line.find(b" ")
        tag, rest = line[:space], line[space:]
        if space <= 0 or not tag.isalnum() or len(line) > self.max_line:
            found = fast_command(line, self.max_line)
            return None if found is None else (*found, _uid_form(line))
        try:
            verdict = self.known[rest]
        except KeyError:
            found = fast_command(line, self.max_line)
            verdict = None if found is None else (found[1], _uid_form(line))
            if len(self.known) >= self.SIZE:
                self.known.clear()  # bounded: a client inventing commands gains nothing
            self.known[rest] = verdict
        return None if verdict is None else (tag, *verdict)


def _uid_form(line: bytes) -> bool:
    words = line.split(None, 2)
    return len(words) > 1 and words[1].upper() == b"UID"


def needs_the_loop(line: bytes) -> bool:
    """A response line the lane leaves to the command loop: a continuation request, BYE, or
    an expunge (the loop holds it back while the client has a command by number pipelined,
    RFC 3501 5.5: `relay._held_back`)."""
    return (line[:1] == b"+" or line[:5].upper() == b"* BYE" or line.endswith(b" EXPUNGE\r\n")
            or line[2:10].upper() == b"VANISHED")


_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\r\n$")  # as `responses.read_response` reads them


def literal_size(line: bytes) -> int | None:
    """The size of the literal a response line announces at its end, if it announces one."""
    match = _LITERAL_AT_END.search(line[-40:])
    return int(match.group(1)) if match else None


# The usual answer to a small FETCH, and the usual unsolicited flag change: UID and FLAGS, no
# MODSEQ, no strings. Anything else takes the general parse (`responses.parse_fetch`).
_PLAIN_FETCH = re.compile(
    rb"\* (\d+) FETCH \((?:UID (\d+) FLAGS \(([^()\r\n]*)\)|FLAGS \(([^()\r\n]*)\)(?: UID (\d+))?)"
    rb"\)\r\n")


def plain_fetch(line: bytes) -> tuple[int, int | None, bytes] | None:
    """(seq, UID or None, flags) of a plain `* n FETCH (UID u FLAGS (...))` line."""
    match = _PLAIN_FETCH.fullmatch(line)
    if match is None:
        return None
    seq, uid, flags, flags2, uid2 = match.groups()
    found = uid or uid2
    return int(seq), int(found) if found else None, flags if flags is not None else flags2
