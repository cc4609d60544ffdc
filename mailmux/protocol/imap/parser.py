"""Parsing one framed IMAP command (RFC 3501 grammar + the extensions we serve) into a `Command`.

`parse_command(raw)` takes exactly what `CommandFramer` produced (first line, literals, CRLF) and
returns a `commands.Command`, or raises `ParseError` carrying the tag whenever one could be read.
No other exception escapes, whatever the input (a fuzz test checks this).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date, datetime, timedelta, timezone

from mailmux.protocol.imap.commands import (
    Append,
    Args,
    Authenticate,
    CancelUpdate,
    CatenatePart,
    Command,
    Compress,
    CopyMove,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    NoArgs,
    Notify,
    NotifyGroup,
    QresyncParams,
    Rename,
    Search,
    SearchKey,
    Section,
    SeqRange,
    SequenceSet,
    Sort,
    StatusArgs,
    Store,
    Thread,
)
from mailmux.protocol.imap.errors import ParseError
from mailmux.protocol.imap.mutf7 import decode_mailbox

_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_TAG_SPECIALS = _ATOM_SPECIALS | {ord("+")}
# The same classes as regular expressions: the hot primitives scan in C, not byte by byte.
_ATOM_RUN = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]*')
_TAG_RUN = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff+]*')
_DIGITS = re.compile(rb"[0-9]*")
_FETCH_WORD = re.compile(rb"[A-Za-z0-9.]*")
_MONTHS = {m: i + 1 for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}
_DATE = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_DATETIME = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
_SYSTEM_FLAGS = {f.upper(): f for f in
                 ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent")}
_NO_ARGS = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE",
            "NAMESPACE"}
_STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                 "SIZE"}
_FETCH_SIMPLE = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE",
                 "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"}
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SEARCH_FLAG_KEYS = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT",
                     "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"}
_SEARCH_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_SEARCH_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
MAX_DEPTH = 50


def _shown(raw: bytes) -> str:
    """Offending input for an error text: one line, quoted, printable, no braces or brackets.

    A Python bytes repr or a raw `{` would reach the client, and a client's response parser
    may read `{` in a BAD text as a literal announcement (imaptest does, and disconnects).
    """
    line = raw.split(b"\n", 1)[0].split(b"\r", 1)[0][:20]
    if not line:
        return "the end of the line"
    return '"' + "".join(chr(c) if 0x20 <= c < 0x7F and c not in b'{}[]"\\' else "?"
                         for c in line) + '"'


class _Fail(Exception):
    def __init__(self, message: str, code: str | None = None, status: str = "BAD") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def _utf8_or_mutf7(raw: bytes) -> str:
    """A mailbox name: raw UTF-8 as UTF8=ACCEPT clients send it (RFC 6855; mbsync 1.4 sends
    it even without), else modified UTF-7 (RFC 3501 5.1.3)."""
    text = raw.decode("utf-8")
    return text if not text.isascii() else decode_mailbox(text)


class _Reader:
    """A cursor over one command's bytes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0
        self.depth = 0

    # primitives -------------------------------------------------------------------------

    def peek(self, n: int = 1) -> bytes:
        return self.raw[self.pos : self.pos + n]

    def at_end(self) -> bool:
        return self.raw[self.pos :] in (b"\r\n", b"\n", b"")

    def end(self) -> None:
        if not self.at_end():
            raise _Fail(f"unexpected {_shown(self.raw[self.pos:])} at end of command")

    def take(self, token: bytes) -> bool:
        """`token` is upper case (every caller's is): the input matches it in any case."""
        got = self.raw[self.pos : self.pos + len(token)]
        if got == token or got.upper() == token:
            self.pos += len(token)
            return True
        return False

    def expect(self, token: bytes, what: str | None = None) -> None:
        if not self.take(token):
            found = _shown(self.raw[self.pos :])
            raise _Fail(f"expected {what or _shown(token)}, found {found}")

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def atom_bytes(self, extra_ok: bytes = b"") -> bytes:
        start = self.pos
        raw = self.raw
        if not extra_ok:
            match = _ATOM_RUN.match(raw, start)
            assert match is not None  # a `*` pattern always matches
            if match.end() == start:
                raise _Fail(f"expected an atom, found {_shown(raw[start:])}")
            self.pos = match.end()
            return raw[start : self.pos]
        while self.pos < len(raw):
            c = raw[self.pos]
            if (c in _ATOM_SPECIALS and c not in extra_ok) or c >= 0x80:
                break
            self.pos += 1
        if self.pos == start:
            raise _Fail(f"expected an atom, found {_shown(raw[start:])}")
        return raw[start : self.pos]

    def fetch_word(self) -> str:
        """A FETCH item name: it stops at "[" (atoms may contain it) and "<"."""
        start = self.pos
        raw = self.raw
        match = _FETCH_WORD.match(raw, start)
        assert match is not None  # a `*` pattern always matches
        self.pos = match.end()
        if self.pos == start:
            raise _Fail(f"expected a FETCH item, found {_shown(raw[start:])}")
        return raw[start : self.pos].decode("ascii").upper()

    def atom(self) -> str:
        return self.atom_bytes().decode("ascii")

    def number(self) -> int:
        start = self.pos
        match = _DIGITS.match(self.raw, start)
        assert match is not None  # a `*` pattern always matches
        self.pos = match.end()
        if self.pos == start or self.pos - start > 20:
            raise _Fail(f"expected a number, found {_shown(self.raw[start:])}")
        return int(self.raw[start : self.pos])

    def nz_number(self) -> int:
        n = self.number()
        if n == 0 or n > 0xFFFFFFFF:
            raise _Fail(f"number {n} out of range")
        return n

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        raw = self.raw
        while True:
            if self.pos >= len(raw):
                raise _Fail("unterminated quoted string")
            c = raw[self.pos]
            if c == 0x22:
                self.pos += 1
                return bytes(out)
            if c == 0x5C:
                nxt = raw[self.pos + 1 : self.pos + 2]
                if nxt not in (b'"', b"\\"):
                    raise _Fail("bad escape in quoted string")
                out += nxt
                self.pos += 2
                continue
            if c in (0x0A, 0x0D):
                raise _Fail("line break in quoted string")
            out.append(c)
            self.pos += 1

    def literal(self) -> tuple[bytes, bool]:
        binary = self.take(b"~")
        self.expect(b"{")
        size = self.number()
        self.take(b"+")
        self.expect(b"}")
        if not (self.take(b"\r\n") or self.take(b"\n")):
            raise _Fail("literal announcement must end the line")
        data = self.raw[self.pos : self.pos + size]
        if len(data) != size:
            raise _Fail("literal shorter than announced")
        self.pos += size
        if not binary and b"\x00" in data:
            raise _Fail("NUL in a non-binary literal", "CLIENTBUG")
        return data, binary

    def starts_literal(self) -> bool:
        # "~" begins a literal8 only when "{" follows; otherwise it is an atom character
        return self.peek() == b"{" or self.peek(2) == b"~{"

    def string(self) -> bytes:
        c = self.peek()
        if c == b'"':
            return self.quoted()
        if self.starts_literal():
            return self.literal()[0]
        raise _Fail(f"expected a string, found {_shown(self.raw[self.pos:])}")

    def astring(self) -> bytes:
        if self.peek() == b'"' or self.starts_literal():
            return self.string()
        return self.atom_bytes(extra_ok=b"]")

    def nstring(self) -> bytes | None:
        if self.peek(3).upper() == b"NIL" and self.raw[self.pos + 3 : self.pos + 4] in (
            b" ", b")", b"\r", b"\n", b""
        ):
            self.pos += 3
            return None
        return self.string()

    def text(self, raw: bytes, charset: str = "UTF-8") -> str:
        try:
            return raw.decode("utf-8" if charset in ("UTF-8", "US-ASCII") else charset)
        except (UnicodeDecodeError, LookupError) as exc:
            raise _Fail("string is not valid UTF-8", "CLIENTBUG") from exc

    def mailbox(self) -> str:
        raw = self.astring()
        try:
            name = _utf8_or_mutf7(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            # Well-formed syntax naming a mailbox that cannot exist: NO, as Dovecot answers.
            raise _Fail(f"invalid mailbox name: {exc}", "CANNOT", "NO") from exc
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        quoted_or_literal = self.peek() == b'"' or self.starts_literal()
        raw = self.string() if quoted_or_literal else self.atom_bytes(extra_ok=b"%*]")
        try:
            return _utf8_or_mutf7(raw)
        except (UnicodeDecodeError, ValueError):
            # Not valid modified UTF-7: no mailbox name can match it, so LIST finds nothing.
            return raw.decode("utf-8", "replace")

    def paren_atoms(self) -> tuple[str, ...]:
        self.expect(b"(")
        items: list[str] = []
        while not self.take(b")"):
            if items:
                self.sp()
            items.append(self.atom().upper())
        return tuple(items)

    # compound values --------------------------------------------------------------------

    def flag(self) -> str:
        if self.take(b"\\"):
            if self.take(b"*"):
                return "\\*"
            name = "\\" + self.atom()
            return _SYSTEM_FLAGS.get(name.upper(), name)
        return self.atom()

    def flag_list(self) -> tuple[str, ...]:
        self.expect(b"(")
        flags: list[str] = []
        while not self.take(b")"):
            if flags:
                self.sp()
            flags.append(self.flag())
        return tuple(flags)

    def seq_number(self) -> int | None:
        if self.take(b"*"):
            return None
        return self.nz_number()

    def sequence_set(self, saved_ok: bool = True) -> SequenceSet:
        if saved_ok and self.take(b"$"):
            return SequenceSet((), saved=True)  # SEARCHRES: the saved result, as a whole set
        ranges: list[SeqRange] = []
        while True:
            low = self.seq_number()
            high = self.seq_number() if self.take(b":") else low
            ranges.append(SeqRange(low, high))
            if not self.take(b","):
                return SequenceSet(tuple(ranges))

    def search_date(self) -> date:
        quoted = self.take(b'"')
        match = _DATE.match(self.raw, self.pos)
        if match is None:
            raise _Fail("expected a date like 1-Feb-1994")
        self.pos = match.end()
        if quoted:
            self.expect(b'"')
        day, month, year = match.groups()
        try:
            return date(int(year), _MONTHS[month.decode().upper()], int(day))
        except (KeyError, ValueError) as exc:
            raise _Fail(f"invalid date {_shown(match.group(0))}") from exc

    def date_time(self) -> datetime:
        self.expect(b'"')
        match = _DATETIME.match(self.raw, self.pos)
        if match is None:
            raise _Fail('expected a date-time like "17-Jul-1996 02:44:25 -0700"')
        self.pos = match.end()
        self.expect(b'"')
        day, month, year, hh, mm, ss, sign, zh, zm = match.groups()
        try:
            offset = timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == b"-" else 1)
            return datetime(int(year), _MONTHS[month.decode().upper()], int(day), int(hh),
                            int(mm), int(ss), tzinfo=timezone(offset))
        except (KeyError, ValueError) as exc:
            raise _Fail(f"invalid date-time {_shown(match.group(0))}") from exc


# --- commands -----------------------------------------------------------------------------


def _fetch_att(r: _Reader) -> FetchAttr:
    word = r.fetch_word()
    if word in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE") and r.peek() == b"[":
        section = _section(r)
        partial = None
        if r.take(b"<"):
            offset = r.number()
            r.expect(b".")
            count = r.nz_number()
            r.expect(b">")
            partial = (offset, count)
        if word.startswith("BINARY"):
            if section.text is not None:
                raise _Fail("BINARY takes part numbers only")
            name = "BINARY.SIZE" if word == "BINARY.SIZE" else "BINARY"
            return FetchAttr(name, section, word == "BINARY.PEEK", partial)
        return FetchAttr("BODY[]", section, word == "BODY.PEEK", partial)
    if word == "BODY":
        return FetchAttr("BODY")
    if word in _FETCH_SIMPLE:
        return FetchAttr(word)
    raise _Fail(f"unknown FETCH item {word}")


def _section(r: _Reader) -> Section:
    r.expect(b"[")
    parts: list[int] = []
    text: str | None = None
    fields: tuple[str, ...] = ()
    while not r.take(b"]"):
        if parts or text:
            r.expect(b".")
        if r.peek().isdigit():
            parts.append(r.nz_number())
            continue
        word = r.atom_bytes().decode("ascii").upper()
        if word not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
            raise _Fail(f"unknown section {word}")
        if word == "MIME" and not parts:
            raise _Fail("MIME needs a part number")
        text = word
        if word.startswith("HEADER.FIELDS"):
            r.sp()
            r.expect(b"(")
            names: list[str] = []
            while not r.take(b")"):
                if names:
                    r.sp()
                names.append(r.astring().decode("ascii", "replace").upper())
            if not names:
                raise _Fail("HEADER.FIELDS needs field names")
            fields = tuple(names)
        r.expect(b"]")
        break
    return Section(tuple(parts), text, fields)


def parse_section(text: bytes) -> Section:
    """A section spec on its own ("1.2.MIME", "HEADER.FIELDS (A B)"), as IMAP URLs carry
    it (RFC 5092); ValueError when it is not one."""
    r = _Reader(b"[" + text + b"]")
    try:
        section = _section(r)
    except _Fail as exc:
        raise ValueError(exc.message) from None
    if r.pos != len(r.raw):
        raise ValueError("text after the section")
    return section


def _fetch(r: _Reader) -> Fetch:
    r.sp()
    seq = r.sequence_set()
    r.sp()
    attrs: list[FetchAttr] = []
    if r.take(b"("):
        while not r.take(b")"):
            if attrs:
                r.sp()
            attrs.append(_fetch_att(r))
        if not attrs:
            raise _Fail("empty FETCH item list")
    else:
        word = r.peek(4).upper()
        macro = next((m for m in _MACROS if word.startswith(m.encode())
                      and r.raw[r.pos + len(m): r.pos + len(m) + 1] in (b" ", b"\r", b"\n")),
                     None)
        if macro:
            r.pos += len(macro)
            attrs = [FetchAttr(a) for a in _MACROS[macro]]
        else:
            attrs.append(_fetch_att(r))
    changed_since = None
    vanished = False
    if r.take(b" ("):
        r.expect(b"CHANGEDSINCE ")
        changed_since = r.number()
        vanished = r.take(b" VANISHED")
        r.expect(b")")
    return Fetch(seq, tuple(attrs), changed_since, vanished)


def _store(r: _Reader) -> Store:
    r.sp()
    seq = r.sequence_set()
    r.sp()
    unchanged = None
    if r.take(b"("):
        r.expect(b"UNCHANGEDSINCE ")
        unchanged = r.number()
        r.expect(b")")
        r.sp()
    mode = "add" if r.take(b"+") else "remove" if r.take(b"-") else "replace"
    r.expect(b"FLAGS")
    silent = r.take(b".SILENT")
    r.sp()
    if r.peek() == b"(":
        flags = r.flag_list()
    else:
        items = [r.flag()]
        while r.take(b" "):
            items.append(r.flag())
        flags = tuple(items)
    return Store(seq, mode, silent, flags, unchanged)


def _search_key(r: _Reader, charset: str) -> SearchKey:
    r.depth += 1
    if r.depth > MAX_DEPTH:
        raise _Fail("search program nested too deeply")
    try:
        if r.take(b"("):
            children = [_search_key(r, charset)]
            while r.take(b" "):
                children.append(_search_key(r, charset))
            r.expect(b")")
            return SearchKey("AND", (), tuple(children))
        c = r.peek()
        if c == b"*" or c == b"$" or c.isdigit():
            return SearchKey("SEQSET", (r.sequence_set(),))
        word = r.atom().upper()
        if word in _SEARCH_FLAG_KEYS:
            return SearchKey(word)
        r.sp()
        if word in ("KEYWORD", "UNKEYWORD"):
            return SearchKey(word, (r.flag(),))
        if word in _SEARCH_STRING_KEYS:
            return SearchKey(word, (r.text(r.astring(), charset),))
        if word == "HEADER":
            field = r.astring().decode("ascii", "replace")
            r.sp()
            return SearchKey(word, (field, r.text(r.astring(), charset)))
        if word in _SEARCH_DATE_KEYS:
            return SearchKey(word, (r.search_date(),))
        if word in ("OLDER", "YOUNGER"):  # WITHIN (RFC 5032): seconds before now
            return SearchKey(word, (r.nz_number(),))
        if word in ("LARGER", "SMALLER", "MODSEQ"):
            if word == "MODSEQ" and r.peek() == b'"':
                r.quoted()  # entry name and type (RFC 7162) carry no meaning for us
                r.sp()
                r.atom()
                r.sp()
            return SearchKey(word, (r.number(),))
        if word == "UID":
            return SearchKey(word, (r.sequence_set(),))
        if word == "NOT":
            return SearchKey(word, (), (_search_key(r, charset),))
        if word == "OR":
            left = _search_key(r, charset)
            r.sp()
            return SearchKey(word, (), (left, _search_key(r, charset)))
        raise _Fail(f"unknown search key {word}")
    finally:
        r.depth -= 1


_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT",
                            "PARTIAL"})
_PARTIAL = re.compile(r"(\d{1,10}):(\d{1,10})")


def _return_options(r: _Reader, allowed: frozenset[str]
                    ) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """RETURN (...) of SEARCH/SORT: the option atoms, and PARTIAL's range (RFC 5267 4.4)."""
    r.expect(b"(")
    options: list[str] = []
    partial: tuple[int, int] | None = None
    while not r.take(b")"):
        if options:
            r.sp()
        word = r.atom().upper()
        if word not in allowed:
            raise _Fail(f"unknown RETURN option {word}")
        if word in options:
            raise _Fail(f"RETURN option {word} given twice")
        options.append(word)
        if word == "PARTIAL":
            r.sp()
            partial = _partial_range(r.atom())
    if partial is not None and "ALL" in options:
        raise _Fail("RETURN PARTIAL conflicts with ALL")
    return tuple(options), partial


def _partial_range(text: str) -> tuple[int, int]:
    match = _PARTIAL.fullmatch(text)
    if match is None:
        raise _Fail("PARTIAL needs a range like 1:100")
    low, high = sorted((int(match.group(1)), int(match.group(2))))
    if low == 0 or high > 0xFFFFFFFF:
        raise _Fail("PARTIAL range out of bounds")
    return low, high


def _search(r: _Reader) -> Search:
    r.sp()
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if r.take(b"RETURN "):
        return_options, partial = _return_options(r, _SEARCH_RETURN)
        r.sp()
    charset = None
    if r.take(b"CHARSET "):
        charset = r.astring().decode("ascii", "replace").upper()
        if charset not in ("UTF-8", "US-ASCII"):
            raise _Fail(f"charset {charset} not supported", "BADCHARSET (UTF-8 US-ASCII)")
        r.sp()
    keys = [_search_key(r, charset or "UTF-8")]
    while r.take(b" "):
        keys.append(_search_key(r, charset or "UTF-8"))
    return Search(SearchKey("AND", (), tuple(keys)), charset, return_options, partial)


_SORT_CRITERIA = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM",
                  "DISPLAYTO"}


_ESORT_OPTIONS = _SEARCH_RETURN


def _sort(r: _Reader) -> Sort:
    r.sp()
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if r.take(b"RETURN "):
        return_options, partial = _return_options(r, _ESORT_OPTIONS)
        r.sp()
    words = r.paren_atoms()
    criteria: list[tuple[bool, str]] = []
    reverse = False
    for word in words:
        if word == "REVERSE" and not reverse:
            reverse = True
            continue
        if word not in _SORT_CRITERIA:
            raise _Fail(f"unknown sort criterion {word}")
        criteria.append((reverse, word))
        reverse = False
    if reverse or not criteria:
        raise _Fail("sort criteria must end with a key")
    r.sp()
    charset, key = _charset_and_program(r)
    return Sort(tuple(criteria), key, charset, return_options, partial)


def _charset_and_program(r: _Reader) -> tuple[str, SearchKey]:
    charset = r.astring().decode("ascii", "replace").upper()
    if charset not in ("UTF-8", "US-ASCII"):
        raise _Fail(f"charset {charset} not supported", "BADCHARSET (UTF-8 US-ASCII)")
    r.sp()
    keys = [_search_key(r, charset)]
    while r.take(b" "):
        keys.append(_search_key(r, charset))
    return charset, SearchKey("AND", (), tuple(keys))


def _thread(r: _Reader) -> Thread:
    r.sp()
    algorithm = r.atom().upper()
    if algorithm not in ("REFERENCES", "ORDEREDSUBJECT"):
        raise _Fail(f"unknown threading algorithm {algorithm}")
    r.sp()
    charset, key = _charset_and_program(r)
    return Thread(algorithm, key, charset)


_LIST_SELECT = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_LIST_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}
MAX_LIST_PATTERNS = 100


def _list_select(r: _Reader) -> tuple[str, ...]:
    """RFC 5258 selection options; RECURSIVEMATCH needs a criterion to recurse on."""
    select = r.paren_atoms()
    unknown = set(select) - _LIST_SELECT
    if unknown:
        raise _Fail(f"unknown LIST selection option {sorted(unknown)[0]}")
    if "RECURSIVEMATCH" in select and not set(select) - {"RECURSIVEMATCH", "REMOTE"}:
        raise _Fail("RECURSIVEMATCH needs another selection option")
    return select


def _list_return(r: _Reader) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """RFC 5258 return options, and LIST-STATUS's STATUS (items) (RFC 5819)."""
    r.expect(b"(")
    options: list[str] = []
    status: tuple[str, ...] | None = None
    while not r.take(b")"):
        if options:
            r.sp()
        option = r.atom().upper()
        if option not in _LIST_RETURN:
            raise _Fail(f"unknown LIST return option {option}")
        if option == "STATUS":
            r.sp()
            status = r.paren_atoms()
            unknown = set(status) - _STATUS_ITEMS
            if unknown or not status:
                raise _Fail(f"unknown STATUS item {', '.join(sorted(unknown)) or '(none)'}")
        options.append(option)
    return tuple(options), status


def _list(r: _Reader, name: str) -> ListArgs:
    r.sp()
    select: tuple[str, ...] = ()
    extended = False
    if r.peek() == b"(":
        select = _list_select(r)
        extended = True
        r.sp()
    reference = r.list_mailbox() if r.peek() not in (b'"',) else r.text(r.string())
    r.sp()
    if r.take(b"("):
        extended = True
        patterns = [r.list_mailbox()]
        while r.take(b" "):
            if len(patterns) >= MAX_LIST_PATTERNS:
                raise _Fail(f"at most {MAX_LIST_PATTERNS} LIST patterns", "LIMIT")
            patterns.append(r.list_mailbox())
        r.expect(b")")
    else:
        patterns = [r.list_mailbox()]
    returns: tuple[str, ...] = ()
    status: tuple[str, ...] | None = None
    if r.take(b" RETURN "):
        extended = True
        returns, status = _list_return(r)
    if extended and name == "LSUB":
        raise _Fail("LSUB takes no extended LIST syntax")
    return ListArgs(reference, tuple(patterns), select, returns, extended, status)


MAX_MULTIAPPEND = 1000
MAX_CATENATE_PARTS = 100
_Message = tuple[tuple[str, ...], datetime | None, bytes, bool]


def _catenate(r: _Reader) -> tuple[CatenatePart, ...]:
    """CATENATE (TEXT literal / URL astring ...) (RFC 4469)."""
    r.expect(b"(")
    parts: list[CatenatePart] = []
    while not r.take(b")"):
        if parts:
            r.sp()
        if len(parts) >= MAX_CATENATE_PARTS:
            raise _Fail(f"at most {MAX_CATENATE_PARTS} CATENATE parts", "LIMIT")
        kind = r.atom().upper()
        r.sp()
        if kind == "TEXT":
            parts.append(CatenatePart(text=r.literal()[0]))
        elif kind == "URL":
            parts.append(CatenatePart(url=r.astring().decode("ascii", "replace")))
        else:
            raise _Fail(f"unknown CATENATE part {kind}")
    if not parts:
        raise _Fail("empty CATENATE")
    return tuple(parts)


def _append_message(r: _Reader) -> tuple[_Message, tuple[CatenatePart, ...] | None]:
    flags: tuple[str, ...] = ()
    when = None
    if r.peek() == b"(":
        flags = r.flag_list()
        r.sp()
    if r.peek() == b'"':
        when = r.date_time()
        r.sp()
    if r.take(b"CATENATE "):
        return (flags, when, b"", False), _catenate(r)
    data, binary = r.literal()
    return (flags, when, data, binary), None


def _append(r: _Reader) -> Append:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    (flags, when, data, binary), parts = _append_message(r)
    more: list[_Message] = []
    catenate = [parts]
    while r.take(b" "):  # MULTIAPPEND (RFC 3502)
        if len(more) >= MAX_MULTIAPPEND:
            raise _Fail(f"at most {MAX_MULTIAPPEND + 1} messages in one APPEND", "LIMIT")
        message, parts = _append_message(r)
        more.append(message)
        catenate.append(parts)
    if all(p is None for p in catenate):
        catenate = []
    return Append(mailbox, flags, when, data, binary, tuple(more), tuple(catenate))


NOTIFY_EVENTS = {e.upper(): e for e in (
    "MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange", "MailboxName",
    "SubscriptionChange", "MailboxMetadataChange", "ServerMetadataChange")}
_NOTIFY_FILTERS = {"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED",
                   "SUBTREE", "MAILBOXES"}
MAX_NOTIFY_GROUPS = 20
MAX_NOTIFY_MAILBOXES = 100


def _notify_mailboxes(r: _Reader) -> tuple[str, ...]:
    """one-or-more-mailbox: a mailbox, or a parenthesised list of them."""
    if not r.take(b"("):
        return (r.mailbox(),)
    names = [r.mailbox()]
    while r.take(b" "):
        if len(names) >= MAX_NOTIFY_MAILBOXES:
            raise _Fail(f"at most {MAX_NOTIFY_MAILBOXES} mailboxes in one NOTIFY group", "LIMIT")
        names.append(r.mailbox())
    r.expect(b")")
    return tuple(names)


def _notify_group(r: _Reader) -> NotifyGroup:
    r.expect(b"(")
    kind = r.atom().upper()
    if kind not in _NOTIFY_FILTERS:
        raise _Fail(f"unknown NOTIFY mailbox filter {kind}")
    mailboxes: tuple[str, ...] = ()
    if kind in ("SUBTREE", "MAILBOXES"):
        r.sp()
        mailboxes = _notify_mailboxes(r)
    r.sp()
    events: list[str] = []
    fetch_attrs: tuple[FetchAttr, ...] = ()
    if not r.take(b"NONE"):
        r.expect(b"(")
        while not r.take(b")"):
            if events:
                r.sp()
            word = r.atom().upper()
            if word not in NOTIFY_EVENTS:
                raise _Fail(f"unknown NOTIFY event {word}")
            if word == "MESSAGENEW" and r.peek(2) == b" (":
                r.sp()
                r.expect(b"(")
                attrs = [_fetch_att(r)]
                while r.take(b" "):
                    attrs.append(_fetch_att(r))
                r.expect(b")")
                fetch_attrs = tuple(attrs)
            events.append(NOTIFY_EVENTS[word])
        if not events:
            raise _Fail("empty NOTIFY event list")
    r.expect(b")")
    return NotifyGroup(kind, tuple(events), mailboxes, fetch_attrs)


def _notify(r: _Reader) -> Notify:
    r.sp()
    if r.take(b"NONE"):
        return Notify(None)
    r.expect(b"SET")
    status = r.take(b" STATUS")
    groups: list[NotifyGroup] = []
    while r.take(b" "):
        if len(groups) >= MAX_NOTIFY_GROUPS:
            raise _Fail(f"at most {MAX_NOTIFY_GROUPS} NOTIFY event groups", "LIMIT")
        groups.append(_notify_group(r))
    if not groups:
        raise _Fail("NOTIFY SET needs an event group")
    # every commit compares each mailbox with these names: keep the product small
    if sum(len(g.mailboxes) for g in groups) > MAX_NOTIFY_MAILBOXES:
        raise _Fail(f"at most {MAX_NOTIFY_MAILBOXES} mailboxes in one NOTIFY", "LIMIT")
    return Notify(tuple(groups), status)


def _id(r: _Reader) -> Id:
    r.sp()
    if r.take(b"NIL"):
        return Id(None)
    r.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while not r.take(b")"):
        if params:
            r.sp()
        key = r.text(r.string())
        r.sp()
        value = r.nstring()
        params.append((key, None if value is None else r.text(value)))
        if len(params) > 30:
            raise _Fail("too many ID parameters")
    return Id(tuple(params))


def _authenticate(r: _Reader) -> Authenticate:
    r.sp()
    mechanism = r.atom().upper()
    initial = None
    if r.take(b" "):
        token = r.atom_bytes(extra_ok=b"")
        if token == b"=":
            initial = b""
        else:
            try:
                initial = base64.b64decode(token, validate=True)
            except binascii.Error as exc:
                raise _Fail("invalid base64 initial response") from exc
    return Authenticate(mechanism, initial)


def _mailbox_arg(r: _Reader, name: str) -> MailboxArg:
    r.sp()
    mailbox = r.mailbox()
    if name in ("SELECT", "EXAMINE") and r.take(b" "):
        return _select_params(r, mailbox)
    if name == "CREATE" and r.take(b" "):
        r.expect(b"(USE ")
        uses = r.flag_list()
        r.expect(b")")
        return MailboxArg(mailbox, special_use=uses)
    return MailboxArg(mailbox)


def _select_params(r: _Reader, mailbox: str) -> MailboxArg:
    """(CONDSTORE) and/or (QRESYNC (...)) after SELECT/EXAMINE's mailbox (RFC 7162)."""
    r.expect(b"(")
    condstore = False
    qresync: QresyncParams | None = None
    while not r.take(b")"):
        if condstore or qresync is not None:
            r.sp()
        word = r.atom().upper()
        if word == "CONDSTORE" and not condstore:
            condstore = True
        elif word == "QRESYNC" and qresync is None:
            r.sp()
            qresync = _qresync(r)
        else:
            raise _Fail(f"unknown or repeated SELECT parameter {word}")
    return MailboxArg(mailbox, condstore=condstore, qresync=qresync)


def _qresync(r: _Reader) -> QresyncParams:
    r.expect(b"(")
    uidvalidity = r.nz_number()
    r.sp()
    modseq = r.number()
    if modseq == 0 or modseq >= 2**63:
        raise _Fail("QRESYNC mod-sequence out of range")
    known: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None
    if r.take(b" ") and r.peek() != b"(":
        known = r.sequence_set(saved_ok=False)
        r.take(b" ")
    if r.take(b"("):
        seqs = r.sequence_set(saved_ok=False)
        r.sp()
        seq_match = (seqs, r.sequence_set(saved_ok=False))
        r.expect(b")")
    r.expect(b")")
    return QresyncParams(uidvalidity, modseq, known, seq_match)


def _args(r: _Reader, name: str, uid: bool) -> Args:
    if name in _NO_ARGS:
        return NoArgs()
    if name == "EXPUNGE":
        if uid:
            r.sp()
            return Expunge(r.sequence_set())
        return Expunge()
    if name == "LOGIN":
        r.sp()
        user = r.text(r.astring())
        r.sp()
        return Login(user, r.text(r.astring()))
    if name == "AUTHENTICATE":
        return _authenticate(r)
    if name in ("SELECT", "EXAMINE", "CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE"):
        return _mailbox_arg(r, name)
    if name == "RENAME":
        r.sp()
        old = r.mailbox()
        r.sp()
        return Rename(old, r.mailbox())
    if name in ("LIST", "LSUB"):
        return _list(r, name)
    if name == "STATUS":
        r.sp()
        mailbox = r.mailbox()
        r.sp()
        items = r.paren_atoms()
        unknown = set(items) - _STATUS_ITEMS
        if unknown or not items:
            raise _Fail(f"unknown STATUS item {', '.join(sorted(unknown)) or '(none)'}")
        return StatusArgs(mailbox, items)
    if name == "APPEND":
        return _append(r)
    if name == "SEARCH":
        return _search(r)
    if name == "SORT":
        return _sort(r)
    if name == "THREAD":
        return _thread(r)
    if name == "FETCH":
        return _fetch(r)
    if name == "STORE":
        return _store(r)
    if name in ("COPY", "MOVE"):
        r.sp()
        seq = r.sequence_set()
        r.sp()
        return CopyMove(seq, r.mailbox())
    if name == "ID":
        return _id(r)
    if name == "NOTIFY":
        return _notify(r)
    if name == "COMPRESS":
        r.sp()
        return Compress(r.atom().upper())
    if name == "CANCELUPDATE":
        tags = []
        while r.take(b" "):
            tags.append(r.text(r.astring()))
        if not tags:
            raise _Fail("CANCELUPDATE needs a tag")
        return CancelUpdate(tuple(tags))
    if name == "ENABLE":
        caps: list[str] = []
        while r.take(b" "):
            caps.append(r.atom().upper())
        if not caps:
            raise _Fail("ENABLE needs a capability")
        return Enable(tuple(caps))
    raise _Fail(f"unknown command {name}")


_UID_COMMANDS = {"COPY", "MOVE", "FETCH", "SEARCH", "SORT", "THREAD", "STORE", "EXPUNGE"}


def parse_command(raw: bytes) -> Command:
    r = _Reader(raw)
    tag: str | None = None
    try:
        start = r.pos
        match = _TAG_RUN.match(raw, start)
        assert match is not None  # a `*` pattern always matches
        r.pos = match.end()
        if r.pos == start or r.peek() != b" ":
            raise _Fail("expected a tag and a command")
        tag = raw[start : r.pos].decode("ascii")
        r.sp()
        name = r.atom().upper()
        uid = False
        if name == "UID":
            r.sp()
            name = r.atom().upper()
            uid = True
            if name not in _UID_COMMANDS:
                raise _Fail(f"UID {name} is not a command")
        args = _args(r, name, uid)
        r.end()
        return Command(tag=tag, name=name, args=args, uid=uid, raw=raw)
    except _Fail as exc:
        raise ParseError(tag, exc.message, exc.code, exc.status) from None
    except (ValueError, OverflowError, RecursionError) as exc:
        raise ParseError(tag, f"malformed command: {exc}") from None
