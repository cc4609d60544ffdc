"""The selected mailbox as one session sees it: sequence numbers and the MODSEQ it was told.

The store is the truth; the view is what this client has been told. It holds only the UIDs
(ascending, in an array: a sequence number is a binary search away) and the HIGHESTMODSEQ it
has caught up to. Flags stay in the store and are read per command for the messages it names.

`apply` takes what the store says changed since that MODSEQ (`changes_since_modseq`) and
returns the untagged responses that bring the client up to date — EXPUNGE (only where the
command allows it; otherwise they wait), FETCH FLAGS for changes this session did not report
itself, and EXISTS — so two sessions on one mailbox see each other's work at the points IMAP
permits, and catching up costs what changed, not what the mailbox holds.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailmux.backend.store.interface import ViewChanges
from mailmux.protocol.imap.commands import SequenceSet
from mailmux.protocol.imap.response import Atom, format_flags, format_sequence_set, untagged


@dataclass
class View:
    mailbox_id: int
    name: str
    readonly: bool
    uidvalidity: int
    uids: array[int] = field(default_factory=lambda: array("q"))
    modseq: int = 0  # the store's HIGHESTMODSEQ this view has caught up to
    condstore: bool = False
    # Changes this session made and already reported (uid -> modseq): not reported twice.
    own: dict[int, int] = field(default_factory=dict)
    # Expunges seen while the command in progress forbade EXPUNGE responses.
    pending_expunge: set[int] = field(default_factory=set)
    recent: set[int] = field(default_factory=set)  # UIDs whose \Recent this session owns
    saved: list[int] = field(default_factory=list)  # SEARCHRES `$`: UIDs, ascending
    qresync: bool = False  # QRESYNC enabled: expunges are told as VANISHED (RFC 7162 3.2.10)
    shared: bool = False  # `uids` belongs to the store's UID cache: copied before extending

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int, lo: int = 0) -> int:
        """Sequence number of a UID in the view (0 if it is not there); `lo` is a hint."""
        i = bisect_left(self.uids, uid, lo)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def resolve(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set, ascending; numbers beyond the view are ignored."""
        if sequence.saved:
            return [u for u in self.saved if self.seq_of(u)]
        uids = self.uids
        if not uids:
            return []
        spans: list[tuple[int, int]] = []  # index ranges [start, stop)
        for r in sequence.ranges:
            if uid:
                lo, hi = r.bounds(uids[-1])
                spans.append((bisect_left(uids, lo), bisect_right(uids, hi)))
            else:
                lo, hi = r.bounds(len(uids))
                spans.append((max(lo, 1) - 1, min(hi, len(uids))))
        spans.sort()
        out: list[int] = []
        reached = 0
        for start, stop in spans:
            start = max(start, reached)
            if start < stop:
                out.extend(uids[start:stop])
                reached = stop
        return out

    def flags_response(self, uid: int, flags: Iterable[str], modseq: int, with_uid: bool,
                       seq: int = 0) -> bytes:
        if uid in self.recent:
            flags = [*flags, "\\Recent"]
        items: list[object] = [Atom("FLAGS"), format_flags(flags)]
        if with_uid or self.qresync:  # a QRESYNC client keeps its cache by UID
            items += [Atom("UID"), uid]
        if self.condstore:
            items += [Atom("MODSEQ"), [modseq]]
        return untagged(seq or self.seq_of(uid), Atom("FETCH"), items)

    def reported(self, uid: int, modseq: int) -> None:
        """This session told its client about this change itself."""
        self.own[uid] = modseq

    def apply(self, changes: ViewChanges, allow_expunge: bool) -> list[bytes]:
        out: list[bytes] = []
        last = self.uids[-1] if self.uids else 0
        self.pending_expunge.update(u for u in changes.expunged if u <= last)
        if allow_expunge and self.pending_expunge:
            out += self._expunge(sorted(self.pending_expunge))
            self.pending_expunge.clear()
        added: list[int] = []
        for uid, flags, modseq in changes.changed:
            if uid > last:
                added.append(uid)
                continue
            if self.own.get(uid) == modseq or uid in self.pending_expunge:
                continue
            seq = self.seq_of(uid)
            if seq:
                out.append(self.flags_response(uid, flags, modseq, with_uid=True, seq=seq))
        if added:
            if self.shared:
                self.uids, self.shared = array("q", self.uids), False
            self.uids.extend(added)
            out.append(untagged(len(self.uids), Atom("EXISTS")))
        self.modseq = max(self.modseq, changes.highestmodseq)
        self.own = {u: m for u, m in self.own.items() if m > self.modseq}
        return out

    def _expunge(self, gone: list[int]) -> list[bytes]:
        """EXPUNGE responses in ascending order, each numbered after the ones before it,
        and the UID array rebuilt once (not shifted once per message). With QRESYNC, one
        VANISHED naming the UIDs instead."""
        out: list[bytes] = []
        removed: set[int] = set()
        for uid in gone:
            seq = self.seq_of(uid)
            if seq:
                out.append(untagged(seq - len(removed), Atom("EXPUNGE")))
                removed.add(uid)
                self.own.pop(uid, None)
        if removed:
            self.uids = array("q", (u for u in self.uids if u not in removed))
            self.shared = False
        if removed and self.qresync:
            return [untagged(Atom("VANISHED"), Atom(format_sequence_set(sorted(removed))))]
        return out
