"""LIST / LSUB (RFC 3501, RFC 5258 extended LIST, RFC 6154 SPECIAL-USE, RFC 3348 CHILDREN).

The basic forms answer as RFC 3501 and CHILDREN do (\\Noselect hierarchy parents, child
attributes always). The extended form (RFC 5258: selection options, a pattern list or RETURN)
answers what was asked: child attributes only for RETURN (CHILDREN), \\NonExistent for names
that are no mailbox (hierarchy parents, subscriptions of deleted mailboxes), and with
RECURSIVEMATCH a matching name whose descendants meet the criteria without matching themselves
is reported with CHILDINFO. `listed` gives the structure; LIST-STATUS (RFC 5819) adds STATUS
lines for the selectable ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mailmux.backend.imap.budget import Budget
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


WILDCARDS = "*%"
FOLDED_PREFIX = len("INBOX")


def _tokens(pattern: str) -> str:
    """The pattern with every run of wildcards collapsed to one (`%*%` is `*`, `%%%` is `%`).

    Collapsing keeps the matcher's state count at most the number of literal characters plus
    one wildcard between each, whatever the client sends."""
    out: list[str] = []
    for ch in pattern:
        if ch in WILDCARDS and out and out[-1] in WILDCARDS:
            out[-1] = "*" if "*" in (ch, out[-1]) else "%"
        else:
            out.append(ch)
    return "".join(out)


class Matcher:
    """A LIST pattern (`*` any, `%` any but the delimiter), joined to its reference.

    Matching simulates the pattern as a set of positions (a Thompson NFA), so one name costs
    O(len(name) x len(pattern)) at worst — never the exponential backtracking a regex built
    from `%` and `*` suffers (`zq%%%%%%%%b` against `zqaaaa…`)."""

    def __init__(self, reference: str, pattern: str, budget: Budget | None = None) -> None:
        full = reference + pattern if not pattern.startswith(DELIMITER) else pattern
        self.tokens = _tokens(full)
        self._budget = budget

    def _closure(self, states: set[int]) -> set[int]:
        # A wildcard may match nothing: standing before it also means standing after it.
        tokens = self.tokens
        out = set(states)
        for i in sorted(states):
            while i < len(tokens) and tokens[i] in WILDCARDS:
                i += 1
                out.add(i)
        return out

    def match(self, name: str) -> bool:
        # INBOX is case-insensitive (RFC 3501 5.1): "inbox" and "Inbox" name it too.
        fold = FOLDED_PREFIX if name.split(DELIMITER, 1)[0] == "INBOX" else 0
        tokens = self.tokens
        end = len(tokens)
        states = self._closure({0})
        for index, ch in enumerate(name):
            if self._budget is not None:
                self._budget.tick()
            nxt: set[int] = set()
            for i in states:
                if i == end:
                    continue
                token = tokens[i]
                if token == "*" or (token == "%" and ch != DELIMITER):
                    nxt.add(i)
                elif token == ch or (index < fold and token.upper() == ch):
                    nxt.add(i + 1)
            if not nxt:
                return False
            states = self._closure(nxt)
        return end in states


def entries(mailboxes: Iterable[MailboxInfo]) -> dict[str, Entry]:
    """Every mailbox, plus the parents that exist only as hierarchy (\\Noselect)."""
    found = {m.name: Entry(m.name, True, m.special_use, m.subscribed) for m in mailboxes}
    for name in list(found):
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            found.setdefault(parent, Entry(parent, False, None, False))
    return found


def lsub_responses(args: ListArgs, mailboxes: list[MailboxInfo],
                   budget: Budget | None = None, utf8: bool = False,
                   subscriptions: Iterable[str] | None = None) -> list[bytes]:
    """RFC 3501 6.3.9: subscribed names matching a pattern; when `%` stops above a subscribed
    name, its unsubscribed parent at the pattern's level is listed as \\Noselect."""
    subscribed = (set(subscriptions) if subscriptions is not None
                  else {m.name for m in mailboxes if m.subscribed})
    matchers = [(Matcher(args.reference, p, budget), "%" in p) for p in args.patterns]
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
                     name if utf8 else encode_mailbox(name)) for name in sorted(found)]


def _with_children(names: list[str]) -> set[str]:
    return {name.rsplit(DELIMITER, 1)[0] for name in names if DELIMITER in name}


def list_responses(args: ListArgs, mailboxes: list[MailboxInfo], lsub: bool,
                   budget: Budget | None = None, utf8: bool = False,
                   subscriptions: Iterable[str] | None = None) -> list[bytes]:
    """`utf8`: the client ENABLEd UTF8=ACCEPT (RFC 6855), names go out in UTF-8.
    `subscriptions`: the subscribed names (deleted mailboxes' included); by default those of
    `mailboxes`."""
    if lsub:
        return lsub_responses(args, mailboxes, budget, utf8, subscriptions)
    if args.extended:
        subscribed = (set(subscriptions) if subscriptions is not None
                      else {m.name for m in mailboxes if m.subscribed})
        return [format_listed(item, utf8)
                for item in listed(args, mailboxes, subscribed, budget)]
    command = "LIST"
    if not lsub and args.patterns == ("",):
        return [untagged(Atom(command), [Atom("\\Noselect")], DELIMITER, "")]
    all_entries = entries(mailboxes)
    names = sorted(all_entries)
    children = _with_children(names)
    regexes = [Matcher(args.reference, p, budget) for p in args.patterns]
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
                            name if utf8 else encode_mailbox(name)))
    return out


@dataclass(frozen=True)
class Listed:
    """One `* LIST` answer of the extended form."""

    name: str
    attributes: tuple[str, ...]
    childinfo: tuple[str, ...] = ()  # the selection criteria some descendant meets

    @property
    def selectable(self) -> bool:
        return "\\NonExistent" not in self.attributes and "\\Noselect" not in self.attributes


def format_listed(item: Listed, utf8: bool = False) -> bytes:
    values: list[object] = [Atom("LIST"), [Atom(a) for a in item.attributes], DELIMITER,
                            item.name if utf8 else encode_mailbox(item.name)]
    if item.childinfo:
        values.append(["CHILDINFO", list(item.childinfo)])
    return untagged(*values)


_CRITERIA = ("SUBSCRIBED", "SPECIAL-USE")


def _ancestors(name: str) -> Iterator[str]:
    parts = name.split(DELIMITER)
    for i in range(len(parts) - 1, 0, -1):
        yield DELIMITER.join(parts[:i])


def listed(args: ListArgs, mailboxes: list[MailboxInfo], subscribed: set[str],
           budget: Budget | None = None) -> list[Listed]:
    """The extended LIST answer (RFC 5258), in name order."""
    existing = entries(mailboxes)
    select = set(args.select_options)
    criteria = tuple(c for c in _CRITERIA if c in select)
    returns = set(args.return_options) | ({"SUBSCRIBED"} & select)
    matchers = [Matcher(args.reference, p, budget) for p in args.patterns]

    def matches(name: str) -> bool:
        return any(m.match(name) for m in matchers)

    def meets(name: str) -> bool:
        entry = existing.get(name)
        if "SUBSCRIBED" in select and name not in subscribed:
            return False
        return "SPECIAL-USE" not in select or bool(entry and entry.special_use)

    names = set(existing) | (subscribed if "SUBSCRIBED" in select else set())
    shown = {n for n in names if meets(n) and matches(n)}
    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in select:
        for name in names:
            if not meets(name) or matches(name):
                continue
            for parent in _ancestors(name):
                if parent not in childinfo and matches(parent):
                    childinfo.add(parent)
    with_children = _with_children(sorted(existing))
    out = []
    for name in sorted(shown | childinfo):
        entry = existing.get(name)
        attrs: list[str] = []
        if entry is None or not entry.selectable:
            attrs.append("\\NonExistent")
        if "CHILDREN" in returns and entry is not None:
            attrs.append("\\HasChildren" if name in with_children else "\\HasNoChildren")
        if entry is not None and entry.special_use and (
                "SPECIAL-USE" in select or "SPECIAL-USE" in returns or not returns):
            attrs.append(entry.special_use)
        if "SUBSCRIBED" in returns and name in subscribed:
            attrs.append("\\Subscribed")
        out.append(Listed(name, tuple(attrs), criteria if name in childinfo else ()))
    return out
