"""Evaluating a SEARCH program against one message (RFC 3501 6.4.4), and what the store
caches at delivery so most searches never parse a message.

Flag, size, UID and date keys only look at the metadata; the message is parsed (through the
context's loader) only when a header or body key needs it, and at most once per message.

`index_entry` computes, from the same functions the matcher uses, the casefolded decoded
header fields and texts the store keeps per body (`body_index` columns and the FTS5 trigram
table): a header key is then an exact `instr` on a column, and BODY/TEXT a trigram match that
narrows the candidates the matcher confirms. Keep the two in step.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from mailmux.backend.message.addresses import parse_addresses
from mailmux.backend.message.headers import decode_header_text, decoded_text, text_parts
from mailmux.backend.message.parsed import Part
from mailmux.backend.store.interface import MessageMeta
from mailmux.protocol.imap.commands import SearchKey, SequenceSet

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_ADDRESS_KEYS = {"BCC", "CC", "FROM", "TO"}


@dataclass
class SearchContext:
    seq: int
    meta: MessageMeta
    load: Callable[[], Part]
    recent: bool = False
    largest_seq: int = 0
    largest_uid: int = 0
    _message: Part | None = field(default=None, repr=False)

    @property
    def message(self) -> Part:
        if self._message is None:
            self._message = self.load()
        return self._message


def _header_contains(msg: Part, name: str, needle: str) -> bool:
    folded = needle.casefold()
    return any(
        key == name.lower() and (not needle or folded in decode_header_text(value).casefold())
        for key, value in msg.fields
    )


def _address_contains(msg: Part, name: str, needle: str) -> bool:
    """FROM/TO/CC/BCC match the parsed addresses (`Name <user@host>`, group names), so comments
    and spacing inside the raw field do not hide an address (as Dovecot searches)."""
    folded = needle.casefold()
    for key, value in msg.fields:
        if key != name.lower():
            continue
        if not needle:
            return True
        if folded in _address_text(value):
            return True
    return False


def _address_text(value: bytes) -> str:
    """What FROM/TO/CC/BCC search in one field (and the index caches): casefolded."""
    text = value.decode("utf-8", "replace")
    rendered = ", ".join(a.searchable() for a in parse_addresses(text))
    return decode_header_text(rendered.encode()).casefold()


def _body_contains(msg: Part, needle: str) -> bool:
    folded = needle.casefold()
    return any(folded in decoded_text(p).casefold() for p in text_parts(msg))


INDEXED_HEADERS = ("subject", "from", "to", "cc", "bcc", "message-id")
_ADDRESS_HEADERS = ("from", "to", "cc", "bcc")  # "@from" etc.: as FROM/TO/CC/BCC search them
MAX_INDEXED_TEXT = 1 << 20  # characters of body text in the FTS index; more is marked partial


@dataclass(frozen=True)
class IndexEntry:
    # name -> its values decoded, casefolded, joined by "\n" (HEADER name); "@from" etc.: the
    # parsed address lists FROM/TO/CC/BCC match
    headers: dict[str, str | None]
    sent: str | None  # ISO date of the Date: header, as SENTON compares it
    header_text: str
    body_text: str
    partial: bool  # body_text was cut at MAX_INDEXED_TEXT


def index_entry(msg: Part) -> IndexEntry:
    headers: dict[str, list[str]] = {}
    for key, value in msg.fields:
        if key in INDEXED_HEADERS:
            headers.setdefault(key, []).append(decode_header_text(value).casefold())
        if key in _ADDRESS_HEADERS:
            headers.setdefault("@" + key, []).append(_address_text(value))
    body = "\n".join(decoded_text(p).casefold() for p in text_parts(msg))
    sent = _sent_date(msg)
    return IndexEntry(
        headers={name: "\n".join(headers[name]) if name in headers else None
                 for name in (*INDEXED_HEADERS, *("@" + h for h in _ADDRESS_HEADERS))},
        sent=sent.isoformat() if sent else None,
        header_text=decode_header_text(msg.header).casefold()[:MAX_INDEXED_TEXT],
        body_text=body[:MAX_INDEXED_TEXT],
        partial=len(body) > MAX_INDEXED_TEXT or len(msg.header) > MAX_INDEXED_TEXT,
    )


def _sent_date(msg: Part) -> date | None:
    value = msg.text("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).date()
    except (TypeError, ValueError, IndexError):
        return None


def _compare(kind: str, when: date | None, target: date) -> bool:
    if when is None:
        return False
    if kind.endswith("BEFORE"):
        return when < target
    if kind.endswith("SINCE"):
        return when >= target
    return when == target


def matches(key: SearchKey, ctx: SearchContext) -> bool:
    name = key.name
    flags = ctx.meta.flags
    if name == "AND":
        return all(matches(child, ctx) for child in key.children)
    if name == "OR":
        return matches(key.children[0], ctx) or matches(key.children[1], ctx)
    if name == "NOT":
        return not matches(key.children[0], ctx)
    if name == "ALL":
        return True
    if name in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[name]
        return (flag in flags) == wanted
    if name == "KEYWORD":
        return str(key.args[0]) in flags
    if name == "UNKEYWORD":
        return str(key.args[0]) not in flags
    if name == "RECENT":
        return ctx.recent
    if name == "NEW":
        return ctx.recent and "\\Seen" not in flags
    if name == "OLD":
        return not ctx.recent
    if name in ("OLDER", "YOUNGER"):  # WITHIN (RFC 5032)
        age = (datetime.now(UTC) - ctx.meta.internaldate).total_seconds()
        limit = int(str(key.args[0]))
        return age > limit if name == "OLDER" else age <= limit
    if name == "LARGER":
        return ctx.meta.size > int(str(key.args[0]))
    if name == "SMALLER":
        return ctx.meta.size < int(str(key.args[0]))
    if name == "MODSEQ":
        return ctx.meta.modseq >= int(str(key.args[0]))
    if name in ("SEQSET", "UID"):
        seqset = key.args[0]
        assert isinstance(seqset, SequenceSet)
        if name == "SEQSET":
            return seqset.contains(ctx.seq, ctx.largest_seq)
        return seqset.contains(ctx.meta.uid, ctx.largest_uid)
    if name in ("BEFORE", "ON", "SINCE"):
        target = key.args[0]
        assert isinstance(target, date)
        return _compare(name, ctx.meta.internaldate.date(), target)
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        target = key.args[0]
        assert isinstance(target, date)
        return _compare(name, _sent_date(ctx.message), target)
    if name in _ADDRESS_KEYS:
        return _address_contains(ctx.message, name, str(key.args[0]))
    if name == "SUBJECT":
        return _header_contains(ctx.message, name, str(key.args[0]))
    if name == "HEADER":
        return _header_contains(ctx.message, str(key.args[0]), str(key.args[1]))
    if name == "BODY":
        return _body_contains(ctx.message, str(key.args[0]))
    if name == "TEXT":
        needle = str(key.args[0])
        return (needle.casefold() in decode_header_text(ctx.message.header).casefold()
                or _body_contains(ctx.message, needle))
    raise ValueError(f"unknown search key {name}")
