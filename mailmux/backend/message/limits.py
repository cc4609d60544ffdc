"""Limits on what one message may hold, checked where mail comes in (SMTP/LMTP intake, APPEND,
STORE), so that no stored message can cost every later reader unbounded work or response size.

A message with thousands of MIME parts or deep nesting makes every BODYSTRUCTURE and section
lookup expensive for everyone who opens the mailbox (boards: every user); so do thousands of
keywords. Mail beyond these limits is refused at the door with a clear reply instead.
"""

from __future__ import annotations

from mailmux.backend.errors import LimitExceeded
from mailmux.backend.message.parsed import MAX_DEPTH, ParsedMessage, Part

MAX_KEYWORDS = 64  # keywords (non-system flags) on one message
MAX_KEYWORD_LENGTH = 100  # characters of one keyword
SYSTEM_FLAG_PREFIX = "\\"


def check_structure(body: bytes, max_parts: int, max_depth: int) -> None:
    """LimitExceeded when the message has more than max_parts parts or nests deeper."""
    parts = 0
    stack: list[Part] = [ParsedMessage.from_bytes(body)]
    while stack:
        part = stack.pop()
        parts += 1
        if parts > max_parts:
            raise LimitExceeded(f"message has more than {max_parts} MIME parts")
        nested = part.depth >= MAX_DEPTH and (
            part.maintype == "multipart" or (part.maintype, part.subtype) == ("message",
                                                                              "rfc822"))
        if part.depth > max_depth or nested:
            raise LimitExceeded(f"message nests MIME parts deeper than {max_depth} levels")
        stack.extend(part.children)
        if part.message is not None:
            stack.append(part.message)


def check_keywords(flags: frozenset[str] | set[str] | list[str] | tuple[str, ...]) -> None:
    keywords = [f for f in flags if not f.startswith(SYSTEM_FLAG_PREFIX)]
    if len(keywords) > MAX_KEYWORDS:
        raise LimitExceeded(f"at most {MAX_KEYWORDS} keywords per message")
    if any(len(k) > MAX_KEYWORD_LENGTH for k in keywords):
        raise LimitExceeded(f"keywords are at most {MAX_KEYWORD_LENGTH} characters long")
