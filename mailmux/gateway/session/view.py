"""What the client has been shown of the selected mailbox, kept exactly for failover.

Per selected mailbox: the sequence-number → UID map, the flags the client was shown per UID, its
HIGHESTMODSEQ, and the UIDs it saw expunged. Every response relayed to the client passes through
`observe`, so the map follows EXISTS, EXPUNGE, VANISHED and FETCH exactly as the client does. A
new message's UID is unknown (None) until a FETCH names it; the relay asks the backend for the
missing UIDs before it passes on a command's tagged answer (`unknown`).

After failover `failover.py` compares this with the new node's mailbox: the new node must have
caught up (every UID the client knows, none it saw expunged), and what differs is then told to
the client the way a server would have told it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from mailmux.gateway.responses import Response, vanished

_NUMBERED = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE|FETCH)\b", re.IGNORECASE)
_LISTING = re.compile(rb"^\* (SEARCH|SORT|THREAD)\b", re.IGNORECASE)


def flag_key(flags: bytes) -> frozenset[bytes]:
    r"""Flags compare case-insensitively and in any order. \Recent belongs to one session on one
    node (RFC 3501 2.3.2), so another node's session differing there is no change to report."""
    return frozenset(f.lower() for f in flags.split()) - {b"\\recent"}


@dataclass
class MailboxView:
    select: bytes  # the SELECT/EXAMINE command as the client sent it, tag excluded
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    uids: list[int | None] = field(default_factory=list)  # seq - 1 → UID
    flags: dict[int, bytes] = field(default_factory=dict)  # UID → flags the client was shown
    # UID → the MODSEQ the client was shown (CONDSTORE): after failover a message whose MODSEQ
    # moved is told again even when its flags read the same (RFC 7162 3.2.4).
    modseqs: dict[int, int] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)  # UIDs the client saw expunged
    confused: bool = False  # a response the map cannot follow: the view is no longer exact
    # No None in uids[:known]: `unknown` (asked after every command) scans only from there, so
    # a command costs what is new, not what the mailbox holds. UIDs are only ever filled in.
    known: int = field(default=0, compare=False, repr=False)
    # UIDs gone on the node that the client still counts: found by a failover during a command
    # that may not carry EXPUNGE (RFC 3501 7.4.1), told at the next point that may. Meanwhile
    # the node numbers messages without them, the client with them: `from_node` / `to_node`.
    pending: set[int] = field(default_factory=set)
    # The client has been shown a message's MODSEQ: CONDSTORE is in force for it (RFC 7162
    # 3.1), so the gateway's own looks at a node ask for MODSEQs too (`wants_modseq`).
    condstore: bool = False

    @property
    def exists(self) -> int:
        return len(self.uids)

    def unknown(self) -> list[int]:
        """Sequence numbers whose UID the gateway does not know yet."""
        uids = self.uids
        try:
            first = uids.index(None, min(self.known, len(uids)))
        except ValueError:
            self.known = len(uids)
            return []
        self.known = first
        return [i + 1 for i in range(first, len(uids)) if uids[i] is None]

    def tail_unknown(self) -> int:
        """How many of the last messages the client knows only by number (new mail)."""
        count = 0
        for uid in reversed(self.uids):
            if uid is not None:
                break
            count += 1
        return count

    def fill_from(self, node_uids: list[int]) -> list[int]:
        """Give the messages the client knows only by number their UIDs from a node's
        ascending list; the UIDs of those gone there come back as placeholders to tell gone.

        A run of unknown messages lies between two known UIDs, and so do their UIDs (a new
        message's UID is above every UID before it). Where the node holds fewer in that gap,
        some were expunged there: which ones the gateway cannot know, but neither can the
        client, which never saw their UIDs; the last of the run stand for them, under
        placeholder UIDs below zero that no node gives out, to be told gone."""
        placeholders: list[int] = []
        lowest = min((u for u in self.uids if u is not None and u < 0), default=0)
        run: list[int] = []
        low = 0

        def close(high: int | None) -> None:
            nonlocal lowest
            first = bisect.bisect_right(node_uids, low)
            last = len(node_uids) if high is None else bisect.bisect_left(node_uids, high)
            found = node_uids[first:min(last, first + len(run))]
            for position, uid in zip(run, found, strict=False):
                self.uids[position] = uid
            for position in run[len(found):]:
                lowest -= 1
                self.uids[position] = lowest
                placeholders.append(lowest)

        for i, uid in enumerate(self.uids):
            if uid is None:
                run.append(i)
            elif uid > 0:  # a real UID (placeholders of earlier failovers bound nothing)
                if run:
                    close(uid)
                    run = []
                low = max(low, uid)
        if run:
            close(None)
        self.known = 0
        return placeholders

    def seq_of(self, uid: int) -> int | None:
        try:
            return self.uids.index(uid) + 1
        except ValueError:
            return None

    def to_node(self, seq: int) -> int | None:
        """The node's number for the client's message `seq` (None: gone on the node)."""
        if not 1 <= seq <= len(self.uids) or self.uids[seq - 1] in self.pending:
            return None
        return seq - sum(1 for u in self.uids[:seq - 1] if u in self.pending)

    def to_client(self, node_seq: int) -> int:
        """The client's number for the node's message `node_seq`."""
        count = 0
        for i, uid in enumerate(self.uids):
            if uid not in self.pending:
                count += 1
                if count == node_seq:
                    return i + 1
        return node_seq + len(self.pending)  # beyond the view: a message new to both

    def from_node(self, raw: bytes, numbers: bytes | None = None) -> bytes:
        """An untagged response in the node's numbering, in the client's. `numbers` names a
        non-UID SEARCH/SORT/THREAD whose answer lists message numbers."""
        if not self.pending:
            return raw
        if (match := _NUMBERED.match(raw)) is not None:
            n = int(match.group(1))
            kind = match.group(2).upper()
            shown = n + len(self.pending) if kind == b"EXISTS" else self.to_client(n)
            return b"* %d %s" % (shown, raw[len(match.group(0)) - len(match.group(2)):])
        if numbers is not None and (match := _LISTING.match(raw)) is not None:
            head, body = raw[:match.end()], raw[match.end():]
            cut = body.upper().find(b"(MODSEQ")
            listed, tail = (body, b"") if cut < 0 or numbers == b"THREAD" else (
                body[:cut], body[cut:])
            listed = re.sub(rb"\d+", lambda m: b"%d" % self.to_client(int(m.group(0))), listed)
            return head + listed + tail
        return raw

    def observe(self, response: Response) -> None:
        kind = response.kind[0]
        if not kind:
            return  # most responses: nothing the view follows
        if kind == b"STATUS":
            self._status(response)
        elif kind == b"FETCH":
            self._fetch(response)
        elif kind == b"VANISHED":
            self._vanished(response.raw)
        elif (n := response.exists) is not None:
            self._exists(n)
        elif (n := response.expunge) is not None:
            self._expunge(n)

    def _status(self, response: Response) -> None:
        if b"[" not in response.raw:
            return  # no response code
        if (modseq := response.highestmodseq) is not None:
            self._modseq(modseq)
        if not response.raw.startswith(b"* "):
            return
        if (v := response.uidvalidity) is not None:
            self.uidvalidity = v
        elif (u := response.uidnext) is not None:
            self.uidnext = u

    def _exists(self, n: int) -> None:
        if n < len(self.uids):
            self.confused = True  # EXISTS may not shrink the mailbox
            del self.uids[n:]
            self.known = min(self.known, n)
        self.uids.extend([None] * (n - len(self.uids)))

    def _expunge(self, n: int) -> None:
        if not 1 <= n <= len(self.uids):
            self.confused = True
            return
        uid = self.uids.pop(n - 1)
        if n <= self.known:
            self.known -= 1
        if uid is not None:
            self.gone.add(uid)
            self.flags.pop(uid, None)
            self.modseqs.pop(uid, None)

    def _fetch(self, response: Response) -> None:
        fetch = response.fetch
        if fetch is None:
            return
        if not 1 <= fetch.seq <= len(self.uids):
            self.confused = True
            return
        uid = self.uids[fetch.seq - 1]
        if fetch.uid is not None:
            if uid is not None and uid != fetch.uid:
                self.confused = True
            uid = self.uids[fetch.seq - 1] = fetch.uid
        if uid is not None and fetch.flags is not None:
            self.flags[uid] = fetch.flags
        if fetch.modseq is not None:
            self.condstore = True
            self._modseq(fetch.modseq)
            if uid is not None:
                self.modseqs[uid] = fetch.modseq

    def _vanished(self, raw: bytes) -> None:
        uids = vanished(raw)
        if uids is None:
            return
        dropped = set(uids)
        known = {u for u in self.uids if u in dropped}
        self.gone |= known  # only what the client knew of matters after failover
        for uid in known:
            self.flags.pop(uid, None)
            self.modseqs.pop(uid, None)
        self.uids = [u for u in self.uids if u not in dropped]
        self.known = 0

    def wants_modseq(self, enabled: list[bytes]) -> bool:
        """Whether the client has CONDSTORE in force: shown a MODSEQ, selected with
        (CONDSTORE), or ENABLEd CONDSTORE or QRESYNC. Then a FETCH the gateway makes to learn
        flags must ask for MODSEQ too: flags told without their MODSEQ leave the client holding
        the MODSEQ from before the change beside the new flags."""
        if self.condstore or b"CONDSTORE" in self.select.upper():
            return True
        return any(word in (b"CONDSTORE", b"QRESYNC")
                   for enable in enabled for word in enable.upper().split())

    def _modseq(self, value: int) -> None:
        if self.highestmodseq is None or value > self.highestmodseq:
            self.highestmodseq = value
