"""SEARCH ... RETURN (UPDATE) contexts (RFC 5267 CONTEXT=SEARCH) of one selected mailbox.

A context remembers the program (sequence numbers already turned into the UIDs they named), the
UIDs its result holds and the MODSEQ up to which changes were weighed. After a command, only the
messages changed since that MODSEQ are searched again (`Contexts.candidates`), so keeping a
result current costs what changed, not what the mailbox holds. Expunged members leave the result
when the view expunges them (`removed`), with the sequence numbers the client still knows:
REMOVEFROM goes out before the EXPUNGE that renumbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mailmux.backend.imap.view import View
from mailmux.protocol.imap.commands import SearchKey
from mailmux.protocol.imap.esearch import update_line

MAX_CONTEXTS = 10  # per session, as Dovecot: more answer NOUPDATE


@dataclass
class UpdateContext:
    tag: str
    uid: bool
    key: SearchKey
    result: set[int]
    modseq: int


@dataclass
class Contexts:
    live: dict[str, UpdateContext] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.live)

    def add(self, context: UpdateContext) -> bool:
        if len(self.live) >= MAX_CONTEXTS or context.tag in self.live:
            return False
        self.live[context.tag] = context
        return True

    def cancel(self, tags: Iterable[str]) -> list[str]:
        """Drop the contexts of TAGS; the tags that named none are returned."""
        unknown = [t for t in tags if t not in self.live]
        for tag in tags:
            self.live.pop(tag, None)
        return unknown

    def clear(self) -> None:
        self.live.clear()

    def oldest(self) -> int:
        return min(c.modseq for c in self.live.values())

    def removed(self, gone: Iterable[int], view: View) -> list[bytes]:
        """REMOVEFROM for members the view is about to expunge (numbered before it does)."""
        gone = set(gone)
        out: list[bytes] = []
        for context in self.live.values():
            left = sorted(context.result & gone)
            if not left:
                continue
            context.result -= gone
            numbers = left if context.uid else [s for u in left if (s := view.seq_of(u))]
            if numbers:
                out.append(update_line(context.tag, context.uid, "REMOVEFROM", [(0, numbers)]))
        return out

    def weighed(self, context: UpdateContext, candidates: list[int], matched: set[int],
                view: View, modseq: int) -> list[bytes]:
        """The updates for CANDIDATES (changed, in the view) of which MATCHED match now."""
        context.modseq = max(context.modseq, modseq)
        added = sorted(u for u in candidates if u in matched and u not in context.result)
        dropped = sorted(u for u in candidates if u not in matched and u in context.result)
        context.result.difference_update(dropped)
        context.result.update(added)
        out: list[bytes] = []
        for kind, uids in (("REMOVEFROM", dropped), ("ADDTO", added)):
            numbers = uids if context.uid else [view.seq_of(u) for u in uids]
            if numbers:
                out.append(update_line(context.tag, context.uid, kind, [(0, numbers)]))
        return out
