"""LIST / LSUB (RFC 3501, RFC 5258 extended LIST, RFC 6154 SPECIAL-USE, RFC 3348 CHILDREN)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mailmux.backend.store.interface import MailboxInfo
from mailmux.protocol.imap.commands import ListArgs
from mailmux.protocol.imap.mutf7 import encode_mailbox
from mailmux.protocol.imap.response import Atom, untagged

DELIMITER = "/"


@dataclass(frozen=True)
class Entry:
    name: str
    selectable: bool
    special_use: str | None
    subscribed: bool


class Matcher:
    """A LIST pattern (`*` any, `%` any but the delimiter), joined to its reference."""

    def __init__(self, reference: str, pattern: str) -> None:
        full = reference + pattern if not pattern.startswith(DELIMITER) else pattern
        regex = "".join(
            ".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch) for ch in full
        )
        self._exact = re.compile(f"^{regex}$", re.DOTALL)
        self._folded = re.compile(f"^{regex}$", re.DOTALL | re.IGNORECASE)

    def match(self, name: str) -> bool:
        # INBOX is case-insensitive (RFC 3501 5.1): "inbox" and "Inbox" name it too.
        if name.split(DELIMITER, 1)[0] == "INBOX":
            return bool(self._folded.match(name))
        return bool(self._exact.match(name))


def entries(mailboxes: Iterable[MailboxInfo]) -> dict[str, Entry]:
    """Every mailbox, plus the parents that exist only as hierarchy (\\Noselect)."""
    found = {m.name: Entry(m.name, True, m.special_use, m.subscribed) for m in mailboxes}
    for name in list(found):
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            found.setdefault(parent, Entry(parent, False, None, False))
    return found


def lsub_responses(args: ListArgs, mailboxes: list[MailboxInfo]) -> list[bytes]:
    """RFC 3501 6.3.9: subscribed names matching a pattern; when `%` stops above a subscribed
    name, its unsubscribed parent at the pattern's level is listed as \\Noselect."""
    subscribed = {m.name for m in mailboxes if m.subscribed}
    matchers = [(Matcher(args.reference, p), "%" in p) for p in args.patterns]
    found: dict[str, list[str]] = {}
    for name in subscribed:
        if any(m.match(name) for m, _ in matchers):
            found[name] = []
            continue
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            if parent not in subscribed and any(m.match(parent) for m, pct in matchers if pct):
                found.setdefault(parent, ["\\Noselect"])
    return [untagged(Atom("LSUB"), [Atom(a) for a in found[name]], DELIMITER,
                     encode_mailbox(name)) for name in sorted(found)]


def list_responses(args: ListArgs, mailboxes: list[MailboxInfo], lsub: bool) -> list[bytes]:
    if lsub:
        return lsub_responses(args, mailboxes)
    command = "LIST"
    if not lsub and args.patterns == ("",):
        return [untagged(Atom(command), [Atom("\\Noselect")], DELIMITER, "")]
    all_entries = entries(mailboxes)
    names = sorted(all_entries)
    children = {n for n in names if any(o.startswith(n + DELIMITER) for o in names)}
    regexes = [Matcher(args.reference, p) for p in args.patterns]
    select = set(args.select_options)
    returns = set(args.return_options)
    out = []
    for name in names:
        entry = all_entries[name]
        if not any(r.match(name) for r in regexes):
            continue
        if (lsub or "SUBSCRIBED" in select) and not entry.subscribed:
            continue
        if "SPECIAL-USE" in select and not entry.special_use:
            continue
        attrs = []
        if not entry.selectable:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if name in children else "\\HasNoChildren")
        if entry.special_use and (not select or "SPECIAL-USE" in select or
                                  "SPECIAL-USE" in returns or not returns):
            attrs.append(entry.special_use)
        if entry.subscribed and ("SUBSCRIBED" in returns or "SUBSCRIBED" in select) and not lsub:
            attrs.append("\\Subscribed")
        out.append(untagged(Atom(command), [Atom(a) for a in attrs], DELIMITER,
                            encode_mailbox(name)))
    return out
