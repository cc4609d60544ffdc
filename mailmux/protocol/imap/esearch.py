"""ESEARCH responses (RFC 4731, 5267, 7162) built from a result, and the sequence sets they hold.

A SEARCH result is ascending; a SORT result is in sort order, so its set folds only ascending
runs into ranges ("3:4,2" for 3 4 2: the order is the answer). PARTIAL (RFC 5267 4.4) names
1-based positions in the result, whatever order that is. ADDTO/REMOVEFROM are the updates a
SEARCH/SORT ... RETURN (UPDATE) sends while its context lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailmux.protocol.imap.response import format_sequence_set, quote


def ordered_set(numbers: Sequence[int]) -> str:
    """Numbers in the given order: only ascending runs are folded into ranges."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)


def expand_set(text: str) -> list[int]:
    """The numbers a set without `*` names, in the order written (ranges ascending)."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        lo, hi = int(low), int(high or low)
        out.extend(range(min(lo, hi), max(lo, hi) + 1))
    return out


def partial_slice(hits: Sequence[int], partial: tuple[int, int]) -> list[int]:
    """The members at 1-based positions low..high of the result (fewer at its end)."""
    low, high = partial
    return list(hits[low - 1:high])


@dataclass(frozen=True)
class Result:
    """What one SEARCH/SORT found, in answer order, and how the client asked for it."""

    tag: str
    uid: bool
    hits: Sequence[int]  # message numbers or UIDs, ascending for SEARCH, sort order for SORT
    options: frozenset[str]  # RETURN options; ALL when the client gave none
    sorted: bool = False
    partial: tuple[int, int] | None = None
    modseq: int | None = None

    def line(self) -> bytes:
        hits = self.hits
        fmt = ordered_set if self.sorted else format_sequence_set
        parts = [b"* ESEARCH (TAG " + quote(self.tag) + b")"]
        if self.uid:
            parts.append(b"UID")
        if hits and "MIN" in self.options:
            parts.append(b"MIN %d" % (hits[0] if self.sorted else min(hits)))
        if hits and "MAX" in self.options:
            parts.append(b"MAX %d" % (hits[-1] if self.sorted else max(hits)))
        if "COUNT" in self.options:
            parts.append(b"COUNT %d" % len(hits))
        if hits and "ALL" in self.options:
            parts.append(b"ALL " + fmt(hits).encode())
        if self.partial is not None:
            low, high = self.partial
            part = partial_slice(hits, self.partial)
            shown = fmt(part).encode() if part else b"NIL"
            parts.append(b"PARTIAL (%d:%d %s)" % (low, high, shown))
        if self.modseq is not None:
            parts.append(b"MODSEQ %d" % self.modseq)
        return b" ".join(parts) + b"\r\n"


def wanted(options: Sequence[str] | None) -> frozenset[str]:
    """RFC 4731: an empty RETURN () means ALL. Options that name no result data (SAVE, UPDATE,
    CONTEXT) do not add ALL: `RETURN (UPDATE)` answers with the tag alone, as Dovecot does."""
    given = frozenset(options or ())
    return given or frozenset({"ALL"})


def update_line(tag: str, uid: bool, kind: str, changes: Sequence[tuple[int, Sequence[int]]],
                sorted_result: bool = False) -> bytes:
    """`* ESEARCH (TAG "t") [UID] ADDTO|REMOVEFROM (pos set [pos set ...])`: each set goes
    with the position of its first member (0 for SEARCH, whose result has no order)."""
    fmt = ordered_set if sorted_result else format_sequence_set
    body = " ".join(f"{pos} {fmt(numbers)}" for pos, numbers in changes if numbers)
    return (b"* ESEARCH (TAG " + quote(tag) + b")" + (b" UID" if uid else b"")
            + f" {kind} ({body})".encode() + b"\r\n")
