"""NOTIFY (RFC 5465): which events a session asked for, and the responses that report them.

The session keeps a `Notifier` while NOTIFY SET is in force. Whenever the store commits
anything, the session compares a fresh snapshot of the user's mailboxes and subscriptions
with the last one it reported (`Notifier.changes`), and sends what differs as untagged
STATUS and LIST responses for mailboxes other than the selected one; the selected mailbox is
reported by the session's usual EXISTS/EXPUNGE/FETCH updates when a SELECTED or
SELECTED-DELAYED group asks for them. Comparing snapshots (instead of following every change
record) costs two store reads per wake-up whatever happened, and many commits in a row are
reported together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailmux.backend.imap.listing import DELIMITER
from mailmux.backend.store.interface import MailboxInfo
from mailmux.protocol.imap.commands import Notify, NotifyGroup
from mailmux.protocol.imap.mutf7 import encode_mailbox
from mailmux.protocol.imap.response import Atom, untagged

SUPPORTED_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName",
                    "SubscriptionChange")
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange"})
SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})
_STATUS_ORDER = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ")


@dataclass(frozen=True)
class Snapshot:
    name: str
    uidvalidity: int
    messages: int
    uidnext: int
    highestmodseq: int

    @classmethod
    def of(cls, info: MailboxInfo) -> Snapshot:
        return cls(info.name, info.uidvalidity, info.messages, info.uidnext, info.highestmodseq)


def unsupported(spec: Notify) -> list[str]:
    """Events the client asked for that this server does not report (BADEVENT)."""
    return sorted({e for g in spec.groups or () for e in g.events} - set(SUPPORTED_EVENTS))


def _items(events: Iterable[str], *, new: bool, gone: bool, flags: bool) -> list[str]:
    wanted: set[str] = set()
    events = set(events)
    if new and "MessageNew" in events:
        wanted |= {"MESSAGES", "UIDNEXT", "UIDVALIDITY"}
    if gone and "MessageExpunge" in events:
        wanted.add("MESSAGES")
    if "FlagChange" in events and (flags or (wanted and new)):
        wanted |= {"UIDVALIDITY", "HIGHESTMODSEQ"}
    return [i for i in _STATUS_ORDER if i in wanted]


class Notifier:
    def __init__(self, spec: Notify, utf8: bool) -> None:
        assert spec.groups is not None
        self.groups = spec.groups
        self.utf8 = utf8
        self.mailboxes: dict[int, Snapshot] = {}
        self.subscriptions: set[str] = set()

    def selected_group(self) -> NotifyGroup | None:
        return next((g for g in self.groups if g.filter in SELECTED_FILTERS and g.events), None)

    def group_for(self, name: str, board: bool, subscriptions: set[str]) -> NotifyGroup | None:
        """The first group whose filter takes this (non-selected) mailbox."""
        for group in self.groups:
            if self._takes(group, name, board, subscriptions):
                return group
        return None

    @staticmethod
    def _takes(group: NotifyGroup, name: str, board: bool, subscriptions: set[str]) -> bool:
        kind = group.filter
        if kind == "INBOXES":
            return name == "INBOX"
        if kind == "PERSONAL":
            return not board
        if kind == "SUBSCRIBED":
            return name in subscriptions
        if kind == "MAILBOXES":
            return name in group.mailboxes
        if kind == "SUBTREE":
            return any(name == m or name.startswith(m + DELIMITER) for m in group.mailboxes)
        return False  # SELECTED, SELECTED-DELAYED: the selected mailbox is reported apart

    def _name(self, name: str) -> str:
        return name if self.utf8 else encode_mailbox(name)

    def _status(self, snap: Snapshot, items: list[str]) -> bytes:
        values = {"MESSAGES": snap.messages, "UIDNEXT": snap.uidnext,
                  "UIDVALIDITY": snap.uidvalidity, "HIGHESTMODSEQ": snap.highestmodseq}
        pairs: list[object] = []
        for item in items:
            pairs += [Atom(item), values[item]]
        return untagged(Atom("STATUS"), self._name(snap.name), pairs)

    def _list(self, name: str, attributes: list[str], oldname: str | None = None) -> bytes:
        values: list[object] = [Atom("LIST"), [Atom(a) for a in attributes], DELIMITER,
                                self._name(name)]
        if oldname is not None:
            values.append(["OLDNAME", [self._name(oldname)]])
        return untagged(*values)

    def start(self, infos: list[MailboxInfo], subscriptions: Iterable[str],
              selected: int | None, status: bool) -> list[bytes]:
        """Take the first snapshot; with NOTIFY SET STATUS, the initial STATUS responses."""
        self.mailboxes = {i.id: Snapshot.of(i) for i in infos}
        self.subscriptions = set(subscriptions)
        if not status:
            return []
        out = []
        for info in infos:
            group = self.group_for(info.name, info.is_board, self.subscriptions)
            if info.id == selected or group is None:
                continue
            events = set(group.events)
            items = _items(events, new=True, gone=True, flags=True)
            if items:
                out.append(self._status(Snapshot.of(info), items))
        return out

    def changes(self, infos: list[MailboxInfo], subscriptions: Iterable[str],
                selected: int | None) -> list[bytes]:
        """What changed since the last call, as responses; the new state is kept."""
        subs = set(subscriptions)
        now = {i.id: (Snapshot.of(i), i.is_board) for i in infos}
        out: list[bytes] = []
        for mailbox_id, old in self.mailboxes.items():
            if mailbox_id not in now:
                group = self.group_for(old.name, False, self.subscriptions)
                if group is not None and "MailboxName" in group.events:
                    out.append(self._list(old.name, ["\\NonExistent"]))
        for mailbox_id, (snap, board) in now.items():
            group = self.group_for(snap.name, board, subs)
            before = self.mailboxes.get(mailbox_id)
            if group is None:
                continue
            if before is None or before.name != snap.name:
                if "MailboxName" in group.events:
                    oldname = before.name if before is not None else None
                    out.append(self._list(snap.name, [], oldname))
                continue
            if mailbox_id == selected or before == snap:
                continue
            new = snap.uidnext != before.uidnext or snap.uidvalidity != before.uidvalidity
            gone = snap.messages < before.messages + (snap.uidnext - before.uidnext)
            items = _items(group.events, new=new, gone=gone,
                           flags=snap.highestmodseq != before.highestmodseq)
            if items:
                out.append(self._status(snap, items))
        out += self._subscription_changes(subs, {s.name for s, _ in now.values()})
        self.mailboxes = {k: s for k, (s, _) in now.items()}
        self.subscriptions = subs
        return list(dict.fromkeys(out))  # a deleted, subscribed name is reported once

    def _subscription_changes(self, subs: set[str], existing: set[str]) -> list[bytes]:
        out = []
        for name in sorted(subs ^ self.subscriptions):
            group = self.group_for(name, False, subs | self.subscriptions)
            if group is None or "SubscriptionChange" not in group.events:
                continue
            attributes = ["\\Subscribed"] if name in subs else []
            if name not in existing:
                attributes.insert(0, "\\NonExistent")
            out.append(self._list(name, attributes))
        return out
