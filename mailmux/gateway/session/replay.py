"""What a command looks like when the gateway re-sends it to another node (sans-IO).

- Changes carry a replay id (`XREPLAY <id>` right after the tag, the pool's shared contract), so
  a node that already holds the effect answers the original answer instead of doing it twice.
- A FETCH whose responses were partly relayed asks only for what the client has not received.
- A COPY/MOVE/STORE/FETCH by sequence number, re-sent after the client was told of expunges,
  names the same messages by UID instead, so it means what it meant when the client sent it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mailmux.protocol.imap.commands import SeqRange, SequenceSet
from mailmux.protocol.imap.response import format_sequence_set

# Commands whose effect must happen once: they carry a replay id to nodes that offer XREPLAY.
REPLAYABLE = frozenset({"APPEND", "COPY", "MOVE", "EXPUNGE", "STORE", "CREATE", "DELETE",
                        "RENAME"})
# RFC 3501 7.4.1: no EXPUNGE response may be sent during these non-UID commands.
NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH"})
MAX_EXPANDED = 1_000_000  # a sequence set is resolved against the view, never beyond this

_SET_COMMAND = re.compile(
    rb"^(?P<tag>[^ ]+) (?P<uid>UID )?(?P<name>FETCH|COPY|MOVE|STORE|EXPUNGE) "
    rb"(?P<set>[0-9:*,]+)(?P<rest>[ \r].*)$",
    re.IGNORECASE | re.DOTALL,
)
_SET = re.compile(rb"^(?:(?:\d+|\*)(?::(?:\d+|\*))?)(?:,(?:\d+|\*)(?::(?:\d+|\*))?)*$")


def with_replay_id(raw: bytes, replay_id: str) -> bytes:
    tag, _, rest = raw.partition(b" ")
    return b"%s XREPLAY %s %s" % (tag, replay_id.encode("ascii"), rest)


def parse_set(text: bytes) -> SequenceSet | None:
    if not _SET.match(text):
        return None
    ranges = []
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        lo = None if low == b"*" else int(low)
        hi = lo if not high else (None if high == b"*" else int(high))
        if lo == 0 or hi == 0:
            return None
        ranges.append(SeqRange(lo, hi))
    return SequenceSet(tuple(ranges))


def resolve(numbers: SequenceSet, candidates: Iterable[int], largest: int) -> list[int]:
    """Members of `candidates` the set names, in their order (bounded by the caller's list)."""
    return [n for n in candidates if numbers.contains(n, largest)]


class SetCommand:
    """A FETCH/COPY/MOVE/STORE (or UID EXPUNGE) with its set, split for rewriting."""

    def __init__(self, raw: bytes) -> None:
        match = _SET_COMMAND.match(raw)
        self.match = match
        self.numbers = parse_set(match.group("set")) if match else None

    @property
    def ok(self) -> bool:
        return self.match is not None and self.numbers is not None

    @property
    def uid(self) -> bool:
        return self.match is not None and self.match.group("uid") is not None

    def with_set(self, numbers: Sequence[int], *, uid: bool | None = None) -> bytes:
        assert self.match is not None
        m = self.match
        prefix = b"UID " if (self.uid if uid is None else uid) else b""
        return b"%s %s%s %s%s" % (m.group("tag"), prefix, m.group("name"),
                                  format_sequence_set(numbers).encode(), m.group("rest"))

    def targets(self, uids: Sequence[int | None]) -> list[int] | None:
        """The UIDs this command names in the view `uids` (None when one is not known)."""
        if not self.ok:
            return None
        assert self.numbers is not None
        if self.uid:
            known = [u for u in uids if u is not None]
            return resolve(self.numbers, known, max(known, default=0))
        seqs = resolve(self.numbers, range(1, len(uids) + 1), len(uids))
        named = [uids[s - 1] for s in seqs]
        if any(u is None for u in named):
            return None
        return [u for u in named if u is not None]
