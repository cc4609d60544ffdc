"""Message-number sets inside SEARCH, SORT and THREAD criteria, found and put in UIDs.

While the gateway holds back expunges the client has not been told of (the view's `pending`),
the node numbers messages without them and the client with them. A criterion that names
messages by number (`SEARCH 2:4 UNSEEN`, `SEARCH OR (1,3) DELETED`) must then reach the node
as the UIDs the client meant (`UID <uids>`), or the node answers for other messages. The
answer's numbers are translated back by the view (`MailboxView.from_node`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mailmux.protocol.imap.response import format_sequence_set

_TOKEN = re.compile(rb'"(?:[^"\\\r\n]|\\.)*"|[()]|[^\s()]+')
_SET = re.compile(rb"^[0-9*]+(?::[0-9*]+)?(?:,[0-9*]+(?::[0-9*]+)?)*$")
_ONE_ARGUMENT = frozenset({
    b"BCC", b"BODY", b"CC", b"FROM", b"KEYWORD", b"UNKEYWORD", b"SUBJECT", b"TEXT", b"TO",
    b"BEFORE", b"ON", b"SINCE", b"SENTBEFORE", b"SENTON", b"SENTSINCE", b"LARGER", b"SMALLER",
    b"UID", b"OLDER", b"YOUNGER", b"CHARSET", b"SAVEDBEFORE", b"SAVEDON", b"SAVEDSINCE",
    b"EMAILID", b"THREADID", b"FILTER",
})
_NOTHING = b"NOT ALL"  # what a set of messages all gone on the node stands for


class NotTranslatable(Exception):
    """Criteria the gateway cannot put in UIDs (a literal, RETURN's numbered answer)."""


def number_sets(line: bytes, name: str) -> list[tuple[int, int]]:
    """(start, end) of each message-number set among the criteria of a non-UID SEARCH, SORT
    or THREAD command line (tag first)."""
    tokens = [(m.start(), m.end(), m.group(0)) for m in _TOKEN.finditer(line.rstrip(b"\r\n"))]
    if tokens and tokens[-1][2].startswith(b"{"):
        raise NotTranslatable("a literal in the criteria")  # the rest is on further lines
    i = 2  # past the tag and the command name
    if name == "SORT":
        i = _past_group(tokens, i) + 1  # the sort criteria, then the charset
    elif name == "THREAD":
        i += 2  # the algorithm, then the charset
    spans = []
    while i < len(tokens):
        start, end, word = tokens[i]
        upper = word.upper()
        if upper == b"RETURN" and name == "SEARCH":
            raise NotTranslatable("RETURN answers with message numbers")
        if upper in _ONE_ARGUMENT:
            i += 2
            continue
        if upper == b"HEADER":
            i += 3
            continue
        if upper == b"MODSEQ":
            # MODSEQ [entry-name entry-type] mod-sequence (RFC 7162 3.1.5)
            quoted = i + 1 < len(tokens) and tokens[i + 1][2].startswith(b'"')
            i += 4 if quoted else 2
            continue
        if _SET.match(word):
            spans.append((start, end))
        i += 1
    return spans


def _past_group(tokens: list[tuple[int, int, bytes]], i: int) -> int:
    """The index just past the parenthesised group that starts at `i`."""
    depth = 0
    while i < len(tokens):
        word = tokens[i][2]
        depth += (word == b"(") - (word == b")")
        i += 1
        if depth <= 0:
            break
    return i


def by_uid(raw: bytes, name: str, uids_of: Callable[[bytes], Sequence[int]]) -> bytes:
    """The command with each number set replaced by `UID <the UIDs it names>`; `uids_of`
    gives the UIDs (still on the node) a set names in the client's numbering."""
    line, sep, rest = raw.partition(b"\n")
    out, last = [], 0
    for start, end in number_sets(line, name):
        uids = uids_of(line[start:end])
        out += [line[last:start],
                b"UID " + format_sequence_set(list(uids)).encode() if uids else _NOTHING]
        last = end
    return b"".join(out) + line[last:] + sep + rest
