"""A SEARCH program as one SQL condition over `messages m` and `body_index bi`.

Each key becomes a two-valued condition (NULLs folded to false, so NOT means what it says),
and says whether it is exact. Flags, sizes, dates, UIDs, MODSEQ and the cached header fields
are exact; BODY/TEXT are an FTS5 trigram match that only narrows (tokens of fewer than three
characters cannot be matched that way at all, and an over-long text is indexed in part), and
a key the index cannot answer becomes "true, check later". AND and OR of supersets are
supersets; NOT of an inexact key is "true, check later". The caller runs the RFC 3501 matcher
on every row the condition keeps unless the whole program was exact.

Sequence-number keys must have been turned into UID keys by the caller (it holds the view).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from mailmux.protocol.imap.commands import SearchKey, SequenceSet

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_COLUMNS = {"subject": "bi.subject", "from": "bi.from_", "to": "bi.to_", "cc": "bi.cc",
            "bcc": "bi.bcc", "message-id": "bi.message_id", "@from": "bi.from_addr",
            "@to": "bi.to_addr", "@cc": "bi.cc_addr", "@bcc": "bi.bcc_addr"}
_DATE_OPS = {"BEFORE": "<", "ON": "=", "SINCE": ">="}
MAX_UID_RANGES = 200
MIN_TRIGRAM = 3
MAX_TRIGRAMS = 16  # of a long needle: enough to narrow, the matcher confirms anyway


@dataclass(frozen=True)
class Condition:
    sql: str
    params: tuple[object, ...]
    exact: bool
    uses_index: bool  # needs the body_index join


TRUE = Condition("1", (), True, False)
UNKNOWN = Condition("1", (), False, False)


def compile_key(key: SearchKey, user: str | None, largest_uid: int) -> Condition:
    """`user` is the asking user on a board (per-user \\Seen), None elsewhere."""
    name = key.name
    if name in ("AND", "OR"):
        parts = [compile_key(c, user, largest_uid) for c in key.children]
        if not parts:
            return TRUE
        glue = " AND " if name == "AND" else " OR "
        return Condition("(" + glue.join(p.sql for p in parts) + ")",
                         tuple(x for p in parts for x in p.params),
                         all(p.exact for p in parts), any(p.uses_index for p in parts))
    if name == "NOT":
        inner = compile_key(key.children[0], user, largest_uid)
        if not inner.exact:
            return UNKNOWN
        return Condition(f"NOT {inner.sql}", inner.params, True, inner.uses_index)
    return _leaf(key, user, largest_uid)


def _leaf(key: SearchKey, user: str | None, largest_uid: int) -> Condition:
    name, args = key.name, key.args
    if name in ("ALL", "OLD"):
        return TRUE
    if name in ("RECENT", "NEW"):
        return Condition("0", (), True, False)  # this server has no \Recent
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        has = _has_flag(flag, user)
        return Condition(has.sql if wanted else f"NOT {has.sql}", has.params, True, False)
    if name in ("KEYWORD", "UNKEYWORD"):
        has = _has_flag(str(args[0]), None)
        return Condition(has.sql if name == "KEYWORD" else f"NOT {has.sql}", has.params,
                         True, False)
    if name in ("LARGER", "SMALLER"):
        op = ">" if name == "LARGER" else "<"
        return Condition(f"m.size {op} ?", (int(str(args[0])),), True, False)
    if name == "MODSEQ":
        return Condition("m.modseq >= ?", (int(str(args[0])),), True, False)
    if name in ("OLDER", "YOUNGER"):  # WITHIN (RFC 5032); julianday() reads the offset
        op = "<" if name == "OLDER" else ">="
        return Condition(f"julianday(m.internaldate) {op} julianday('now') - ? / 86400.0",
                         (int(str(args[0])),), True, False)
    if name == "UID":
        return _uid_ranges(args[0], largest_uid)
    if name in _DATE_OPS:
        assert isinstance(args[0], date)
        # internaldate is stored in ISO form: its first ten characters are its own date.
        return Condition(f"substr(m.internaldate, 1, 10) {_DATE_OPS[name]} ?",
                         (args[0].isoformat(),), True, False)
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        assert isinstance(args[0], date)
        return Condition(f"coalesce(bi.sent {_DATE_OPS[name[4:]]} ?, 0)",
                         (args[0].isoformat(),), True, True)
    if name in ("FROM", "TO", "CC", "BCC"):
        return _header("@" + name.lower(), str(args[0]))
    if name == "SUBJECT":
        return _header("subject", str(args[0]))
    if name == "HEADER":
        return _header(str(args[0]).lower(), str(args[1]))
    if name in ("BODY", "TEXT"):
        return _text(str(args[0]), only_body=name == "BODY")
    return UNKNOWN  # SEQSET left untranslated, or a key added later


def _has_flag(flag: str, user: str | None) -> Condition:
    sql = "instr(' ' || m.flags || ' ', ?) > 0"
    if user is not None and flag == "\\Seen":
        return Condition(f"({sql} OR EXISTS (SELECT 1 FROM board_seen b WHERE b.user = ? AND "
                         "b.mailbox_id = m.mailbox_id AND b.uid = m.uid))",
                         (f" {flag} ", user), True, False)
    if user is not None:  # a board reader's own flags (backend/store/boardflags.py)
        return Condition(f"({sql} OR EXISTS (SELECT 1 FROM board_flags b WHERE b.user = ? AND "
                         "b.mailbox_id = m.mailbox_id AND b.uid = m.uid AND b.flag = ?))",
                         (f" {flag} ", user, flag), True, False)
    return Condition(sql, (f" {flag} ",), True, False)


def _uid_ranges(seqset: object, largest_uid: int) -> Condition:
    assert isinstance(seqset, SequenceSet)
    if len(seqset.ranges) > MAX_UID_RANGES:
        return UNKNOWN
    bounds = [r.bounds(largest_uid) for r in seqset.ranges]
    sql = " OR ".join("m.uid BETWEEN ? AND ?" for _ in bounds)
    return Condition(f"({sql or '0'})", tuple(x for b in bounds for x in b), True, False)


def _header(field: str, needle: str) -> Condition:
    column = _COLUMNS.get(field)
    if column is None or "\n" in needle:
        return UNKNOWN
    if not needle:
        return Condition(f"{column} IS NOT NULL", (), True, True)
    return Condition(f"coalesce(instr({column}, ?) > 0, 0)", (needle.casefold(),), True, True)


def _text(needle: str, only_body: bool) -> Condition:
    folded = needle.casefold()
    if len(folded) < MIN_TRIGRAM:
        return UNKNOWN
    # The index keeps which column a trigram is in, not where (detail=column: half the size),
    # so a needle is asked for as all of its trigrams, anywhere in the column: a superset.
    grams = list(dict.fromkeys(folded[i:i + MIN_TRIGRAM]
                               for i in range(len(folded) - MIN_TRIGRAM + 1)))[:MAX_TRIGRAMS]
    every = " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)
    query = f"body : ({every})" if only_body else every
    return Condition("(bi.partial OR bi.id IN (SELECT rowid FROM body_fts WHERE body_fts "
                     "MATCH ?))", (query,), False, True)
