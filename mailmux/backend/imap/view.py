"""The selected mailbox as one session sees it: sequence numbers, reported flags, pending news.

The store is the truth; the view is what this client has been told. `refresh` compares the two
and returns the untagged responses that bring the client up to date — EXPUNGE (only where the
command allows it), EXISTS, and FETCH FLAGS for changes made by other sessions — so that two
sessions on one mailbox see each other's work at the points IMAP permits.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from mailmux.backend.store.interface import MessageMeta
from mailmux.protocol.imap.commands import SequenceSet
from mailmux.protocol.imap.response import Atom, format_flags, untagged


@dataclass
class View:
    mailbox_id: int
    name: str
    readonly: bool
    uidvalidity: int
    uids: list[int] = field(default_factory=list)
    meta: dict[int, MessageMeta] = field(default_factory=dict)
    condstore: bool = False
    recent: set[int] = field(default_factory=set)  # UIDs whose \Recent this session owns

    def load(self, metas: list[MessageMeta]) -> None:
        self.uids = [m.uid for m in metas]
        self.meta = {m.uid: m for m in metas}

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int:
        index = bisect.bisect_left(self.uids, uid)  # uids ascend
        if index == len(self.uids) or self.uids[index] != uid:
            raise ValueError(f"{uid} is not in the view")
        return index + 1

    def resolve(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set, ascending; numbers beyond the view are ignored.

        Works range by range (binary search into the sorted UIDs), so a set of thousands of
        ranges over thousands of messages costs O((ranges + result) log n), not their product."""
        if not self.uids:
            return []
        count = len(self.uids)
        largest = self.uids[-1] if uid else count
        out: list[int] = []
        done = 0  # index into uids below which everything is already in `out`
        for lo, hi in sorted(r.bounds(largest) for r in sequence.ranges):
            if uid:
                start, stop = bisect.bisect_left(self.uids, lo), bisect.bisect_right(self.uids, hi)
            else:
                start, stop = max(lo, 1) - 1, min(hi, count)
            start = max(start, done)
            if start < stop:
                out.extend(self.uids[start:stop])
                done = stop
        return out

    def flags_response(self, meta: MessageMeta, with_uid: bool) -> bytes:
        flags = meta.flags | {"\\Recent"} if meta.uid in self.recent else meta.flags
        items: list[object] = [Atom("FLAGS"), format_flags(flags)]
        if with_uid:
            items += [Atom("UID"), meta.uid]
        if self.condstore:
            items += [Atom("MODSEQ"), [meta.modseq]]
        return untagged(self.seq_of(meta.uid), Atom("FETCH"), items)

    def refresh(self, metas: list[MessageMeta], allow_expunge: bool) -> list[bytes]:
        # Order as Dovecot sends it: flag changes first (numbered before any expunge), then
        # EXPUNGEs from the highest number down (so each names the message's old position),
        # then EXISTS for new mail.
        fresh = {m.uid: m for m in metas}
        out: list[bytes] = []
        for uid in self.uids:
            new = fresh.get(uid)
            old = self.meta[uid]
            if new is not None and (new.flags != old.flags or new.modseq != old.modseq):
                self.meta[uid] = new
                if new.flags != old.flags:
                    out.append(self.flags_response(new, with_uid=True))
        if allow_expunge:
            for uid in reversed([u for u in self.uids if u not in fresh]):
                out.append(untagged(self.seq_of(uid), Atom("EXPUNGE")))
                self.uids.remove(uid)
                del self.meta[uid]
        known = set(self.uids)
        added = [m for m in metas if m.uid not in known and m.uid > (self.uids[-1] if self.uids
                                                                   else 0)]
        if added:
            for m in added:
                self.uids.append(m.uid)
                self.meta[m.uid] = m
            out.append(untagged(len(self.uids), Atom("EXISTS")))
        return out
