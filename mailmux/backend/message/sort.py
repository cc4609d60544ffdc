"""SORT keys (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO) and the base subject.

`sort_order` takes each candidate's (uid, metadata, parsed message) and the criteria and
returns the UIDs in order; `sort_keys` and `order_keyed` are its two halves, so a caller can
reduce each message to its keys as it reads it and keep no parsed message. Ties (and REVERSE
ties) fall back to arrival order, i.e. the UID, which is the sequence order. Pure CPU work:
the session runs it in a worker thread.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailmux.backend.message.addresses import Address, parse_addresses
from mailmux.backend.message.headers import decode_header_text
from mailmux.backend.message.parsed import Part
from mailmux.backend.store.interface import MessageMeta

CRITERIA = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM",
            "DISPLAYTO"}

_SPACE = re.compile(r"\s+")
_TRAILER = re.compile(r"(\s*\(fwd\)|\s+)$", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\]\s*"
_REFWD = re.compile(rf"^({_BLOB})*(re|fwd?)\s*({_BLOB})?:", re.IGNORECASE)
_LEADING_BLOB = re.compile(rf"^{_BLOB}")
_FWD_WRAPPER = re.compile(r"^\[fwd:(.*)\]$", re.IGNORECASE | re.DOTALL)


def base_subject(raw: str) -> str:
    """RFC 5256 2.1: the subject without Re:/Fwd: leaders, [blob]s, (fwd) trailers,
    upper-cased (i;ascii-casemap compares upper case: "[" and "_" sort after "Z")."""
    subject = _SPACE.sub(" ", decode_header_text(raw.encode("utf-8", "replace")))
    while True:
        while (trimmed := _TRAILER.sub("", subject)) != subject:  # step 2
            subject = trimmed
        while True:  # steps 3-5
            before = subject
            subject = subject.lstrip(" ")
            leader = _REFWD.match(subject)
            if leader:
                subject = subject[leader.end():]
            blob = _LEADING_BLOB.match(subject)
            if blob and subject[blob.end():]:
                subject = subject[blob.end():]
            if subject == before:
                break
        wrapped = _FWD_WRAPPER.match(subject)  # step 6
        if wrapped is None:
            return subject.upper()
        subject = wrapped.group(1)


def _first_address(msg: Part, field: str) -> Address | None:
    """The first address of the field; a group's name counts as its mailbox (as Dovecot)."""
    value = msg.text(field)
    if value is None:
        return None
    return next((a for a in parse_addresses(value) if a.mailbox is not None), None)


def _mailbox_key(msg: Part, field: str) -> str:
    address = _first_address(msg, field)
    return (address.mailbox or "").upper() if address else ""


def _display_key(msg: Part, field: str) -> str:
    address = _first_address(msg, field)
    if address is None:
        return ""
    if address.name:
        return decode_header_text(address.name.encode("utf-8", "replace")).upper()
    spec = address.mailbox or ""
    return (f"{spec}@{address.host}" if address.host is not None else spec).upper()


def sent_time(msg: Part, meta: MessageMeta) -> float:
    """The Date: header as a timestamp, else INTERNALDATE (RFC 5256 SORT DATE)."""
    value = msg.text("date")
    if value:
        try:
            return email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return meta.internaldate.timestamp()


@dataclass(frozen=True)
class Candidate:
    uid: int
    meta: MessageMeta
    msg: Part


def _key(criterion: str, c: Candidate) -> object:
    if criterion == "ARRIVAL":
        return c.meta.internaldate.timestamp()
    if criterion == "SIZE":
        return c.meta.size
    if criterion == "DATE":
        return sent_time(c.msg, c.meta)
    if criterion == "SUBJECT":
        return base_subject(c.msg.text("subject") or "")
    if criterion in ("FROM", "TO", "CC"):
        return _mailbox_key(c.msg, criterion.lower())
    return _display_key(c.msg, criterion[len("DISPLAY"):].lower())


Keyed = tuple[int, tuple[object, ...]]  # a UID and its sort keys, most significant first


def sort_keys(c: Candidate, criteria: Sequence[tuple[bool, str]]) -> Keyed:
    """The keys a candidate sorts by: made once, so the parsed message need not be kept."""
    return c.uid, tuple(_key(name, c) for _, name in criteria)


def order_keyed(rows: Sequence[Keyed], criteria: Sequence[tuple[bool, str]]) -> list[int]:
    """UIDs of `sort_keys` rows in sort order: one stable sort per key, least significant
    first, so ties (REVERSE ones too) keep arrival order."""
    ordered = sorted(rows, key=lambda r: r[0])
    for i in reversed(range(len(criteria))):
        ordered.sort(key=lambda r: r[1][i], reverse=criteria[i][0])  # type: ignore[arg-type,return-value]
    return [uid for uid, _ in ordered]


def sort_order(candidates: Sequence[Candidate],
               criteria: Sequence[tuple[bool, str]]) -> list[int]:
    """UIDs sorted by `criteria` ((reverse, name) pairs, most significant first)."""
    return order_keyed([sort_keys(c, criteria) for c in candidates], criteria)
