"""The IMAP command model: what the parser produces and the server consumes.

Every parsed command is a `Command` holding its tag, its upper-case name, whether it came
with the `UID` prefix, one argument dataclass from this module, and the exact bytes the
client sent (the gateway replays those). Values are plain Python types so that tests can
build them by hand; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# --- sequence sets -------------------------------------------------------------------


@dataclass(frozen=True)
class SeqRange:
    """One element of a sequence set; `None` stands for `*` (the largest number in use)."""

    low: int | None
    high: int | None

    def bounds(self, largest: int) -> tuple[int, int]:
        lo = largest if self.low is None else self.low
        hi = largest if self.high is None else self.high
        return (lo, hi) if lo <= hi else (hi, lo)


@dataclass(frozen=True)
class SequenceSet:
    """`saved` is SEARCHRES's `$` (RFC 5182): the session's saved search result, which only the
    session can resolve; such a set has no ranges and contains nothing by itself."""

    ranges: tuple[SeqRange, ...]
    saved: bool = False

    def contains(self, number: int, largest: int) -> bool:
        for r in self.ranges:
            lo, hi = r.bounds(largest)
            if lo <= number <= hi:
                return True
        return False


# --- FETCH ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """BODY[<part>.<text>(<fields>)]; `part` is () for the whole message."""

    part: tuple[int, ...] = ()
    # None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME"
    text: str | None = None
    fields: tuple[str, ...] = ()  # upper-cased header names for HEADER.FIELDS[.NOT]


@dataclass(frozen=True)
class FetchAttr:
    """One FETCH data item. Macros (ALL, FAST, FULL) are expanded by the parser.

    `name` is one of: FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODYSTRUCTURE,
    BODY (no section: non-extensible structure), BODY[] (with section, see `section`),
    BINARY, BINARY.SIZE, RFC822, RFC822.HEADER, RFC822.TEXT, MODSEQ.
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None  # (offset, count)


# --- SEARCH --------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchKey:
    """A node of a SEARCH program.

    name: ALL, ANSWERED, DELETED, DRAFT, FLAGGED, NEW, OLD, RECENT, SEEN, UNANSWERED,
    UNDELETED, UNDRAFT, UNFLAGGED, UNSEEN, KEYWORD(flag), UNKEYWORD(flag),
    BCC/CC/FROM/SUBJECT/TO/BODY/TEXT(str), HEADER(field, str),
    BEFORE/ON/SINCE/SENTBEFORE/SENTON/SENTSINCE(date), LARGER/SMALLER(int),
    SEQSET(SequenceSet), UID(SequenceSet), MODSEQ(int),
    NOT(1 child), OR(2 children), AND(n children: a parenthesised list or the top level).
    """

    name: str
    args: tuple[object, ...] = ()
    children: tuple[SearchKey, ...] = ()


# --- arguments of each command -------------------------------------------------------


@dataclass(frozen=True)
class NoArgs:
    """CAPABILITY, NOOP, LOGOUT, STARTTLS, CHECK, CLOSE, UNSELECT, IDLE, NAMESPACE."""


@dataclass(frozen=True)
class Login:
    user: str
    password: str

    def __repr__(self) -> str:  # never let a password reach a log through repr()
        return f"Login(user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True)
class Authenticate:
    mechanism: str  # upper-cased
    initial: bytes | None = None  # SASL-IR initial response, base64-decoded; b"" for "="

    def __repr__(self) -> str:
        return f"Authenticate(mechanism={self.mechanism!r}, initial=<hidden>)"


@dataclass(frozen=True)
class MailboxArg:
    """SELECT, EXAMINE, CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE.

    `mailbox` is decoded from modified UTF-7 to str; INBOX (any case) is normalised to
    "INBOX". `condstore` is SELECT/EXAMINE (CONDSTORE); `special_use` is CREATE (USE (...));
    `qresync` is SELECT/EXAMINE (QRESYNC (...)) (RFC 7162).
    """

    mailbox: str
    condstore: bool = False
    special_use: tuple[str, ...] = ()
    qresync: QresyncParams | None = None


@dataclass(frozen=True)
class QresyncParams:
    """SELECT ... (QRESYNC (uidvalidity modseq [known-uids [(seq-match uid-match)]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # seq-match: message sequence numbers and the UIDs the client holds for them
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True)
class ListArgs:
    """LIST and LSUB. Extended LIST (RFC 5258) selection/return options are upper-cased atoms.

    `extended` is true when the command used the extended syntax (selection options, a
    parenthesised pattern list or RETURN): the answer then follows RFC 5258 (no child
    information unless asked, \\NonExistent). `status_items` are LIST-STATUS's RETURN
    (STATUS (...)) items (RFC 5819); None when not asked.
    """

    reference: str
    patterns: tuple[str, ...]
    select_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    extended: bool = False
    status_items: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]  # MESSAGES, RECENT, UIDNEXT, UIDVALIDITY, UNSEEN, HIGHESTMODSEQ, SIZE


@dataclass(frozen=True)
class CatenatePart:
    """One part of a CATENATE (RFC 4469): a TEXT literal, or a URL naming (part of) a message."""

    text: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class Append:
    mailbox: str
    flags: tuple[str, ...]
    date: datetime | None  # timezone-aware
    message: bytes
    binary: bool = False  # sent as ~{n}
    # MULTIAPPEND (RFC 3502): the messages after the first, each (flags, date, bytes, binary)
    more: tuple[tuple[tuple[str, ...], datetime | None, bytes, bool], ...] = ()
    # CATENATE (RFC 4469): when any message is catenated, one entry per message (the first,
    # then `more`): its parts, or None for a message sent as a literal. A catenated message's
    # `bytes` are empty until the server has put its parts together.
    catenate: tuple[tuple[CatenatePart, ...] | None, ...] = ()


@dataclass(frozen=True)
class Search:
    """SEARCH. `return_options` are the RETURN (...) atoms (ESEARCH, SEARCHRES's SAVE,
    CONTEXT=SEARCH's UPDATE/CONTEXT/PARTIAL) without PARTIAL's range, which is `partial`
    (low <= high, both >= 1)."""

    key: SearchKey  # always an AND at the top
    charset: str | None = None  # upper-cased
    return_options: tuple[str, ...] | None = None  # ESEARCH RETURN (...); None if absent
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class Sort:
    """SORT (RFC 5256): `criteria` are (reverse, name) pairs, most significant first."""

    criteria: tuple[tuple[bool, str], ...]
    key: SearchKey
    charset: str
    return_options: tuple[str, ...] | None = None  # ESORT (RFC 5267) RETURN (...)
    partial: tuple[int, int] | None = None  # CONTEXT=SORT's PARTIAL range, as in Search


@dataclass(frozen=True)
class Thread:
    """THREAD (RFC 5256): `algorithm` is REFERENCES or ORDEREDSUBJECT."""

    algorithm: str
    key: SearchKey
    charset: str


@dataclass(frozen=True)
class Fetch:
    sequence: SequenceSet
    attrs: tuple[FetchAttr, ...]
    changed_since: int | None = None
    vanished: bool = False  # QRESYNC: UID FETCH ... (CHANGEDSINCE n VANISHED)


@dataclass(frozen=True)
class Store:
    sequence: SequenceSet
    mode: str  # "replace", "add" or "remove"
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True)
class CopyMove:
    """COPY and MOVE."""

    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE with a set (UIDPLUS)."""

    sequence: SequenceSet | None = None


@dataclass(frozen=True)
class Id:
    params: tuple[tuple[str, str | None], ...] | None  # None for ID NIL


@dataclass(frozen=True)
class CancelUpdate:
    """CANCELUPDATE (RFC 5267): the tags of the SEARCH/SORT ... RETURN (UPDATE) to stop."""

    tags: tuple[str, ...]


@dataclass(frozen=True)
class Enable:
    capabilities: tuple[str, ...]  # upper-cased


@dataclass(frozen=True)
class NotifyGroup:
    """One event group of NOTIFY SET (RFC 5465): which mailboxes, which events.

    `filter` is SELECTED, SELECTED-DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE or
    MAILBOXES (the last two name `mailboxes`); `events` are canonical event names
    ("MessageNew", ...), () for NONE; `fetch_attrs` are MessageNew's FETCH items.
    """

    filter: str
    events: tuple[str, ...]
    mailboxes: tuple[str, ...] = ()
    fetch_attrs: tuple[FetchAttr, ...] = ()


@dataclass(frozen=True)
class Notify:
    """NOTIFY NONE (`groups` None) or NOTIFY SET [STATUS] groups."""

    groups: tuple[NotifyGroup, ...] | None
    status: bool = False


@dataclass(frozen=True)
class Compress:
    """COMPRESS (RFC 4978); `mechanism` upper-cased (DEFLATE is the one defined)."""

    mechanism: str


Args = (
    NoArgs | Login | Authenticate | MailboxArg | Rename | ListArgs | StatusArgs | Append
    | Search | Sort | Thread | Fetch | Store | CopyMove | Expunge | Id | Enable | Notify
    | Compress | CancelUpdate
)


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper-case: "FETCH" for both FETCH and UID FETCH
    args: Args = field(default_factory=NoArgs)
    uid: bool = False
    raw: bytes = b""  # exactly the bytes the client sent, literals included

    def __repr__(self) -> str:
        return f"Command(tag={self.tag!r}, name={self.name!r}, uid={self.uid}, args={self.args!r})"
