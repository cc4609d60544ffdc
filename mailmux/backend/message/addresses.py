"""RFC 5322 address lists as IMAP sees them: groups, source routes and comments kept.

`parse_addresses(text)` turns a header value into `Address` items. A group is its start marker
(`mailbox` = the group name, `host` None), its members, then an end marker (all None): that is
ENVELOPE's own encoding (RFC 3501 7.4.2). Obsolete syntax found in real mail is accepted:
comments and spaces around `@`, routes (`<@a,@b:user@host>`), a comment as the display name
(`user@host (Real Name)`). Any text gives some list and never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r'\x01\d+\x01|"(?:[^"\\]|\\.)*"?|\[(?:[^\]\\]|\\.)*\]?|[()<>@,;:]|[^\s()<>@,;:"\[\x01]+',
    re.DOTALL)
_COMMENT = re.compile(r"\x01(\d+)\x01")
MAX_ADDRESSES = 10_000


@dataclass(frozen=True)
class Address:
    name: str | None
    route: str | None
    mailbox: str | None
    host: str | None

    def as_list(self) -> list[str | None]:
        return [self.name, self.route, self.mailbox, self.host]

    def searchable(self) -> str:
        """The text SEARCH FROM/TO/CC/BCC look in: `Name <mailbox@host>` or a group's name."""
        if self.host is None:
            return self.mailbox or ""
        spec = f"{self.mailbox or ''}@{self.host}"
        return f"{self.name} <{spec}>" if self.name else spec


GROUP_END = Address(None, None, None, None)


def _strip_comments(text: str) -> tuple[str, list[str]]:
    """The text with each (nested) comment replaced by a marker token, and the comments."""
    out: list[str] = []
    comments: list[str] = []
    depth = 0
    current: list[str] = []
    i = 0
    in_quote = False
    while i < len(text):
        ch = text[i]
        if ch == "\\" and (in_quote or depth):
            (current if depth else out).append(text[i : i + 2])
            i += 2
            continue
        if depth == 0 and ch == '"':
            in_quote = not in_quote
        if not in_quote and ch == "(":
            depth += 1
            if depth > 1:
                current.append(ch)
        elif not in_quote and ch == ")" and depth:
            depth -= 1
            if depth:
                current.append(ch)
            else:
                out.append(f" \x01{len(comments)}\x01 ")
                comments.append("".join(current).strip())
                current = []
        elif depth:
            current.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out), comments


def _word(token: str) -> str:
    if token.startswith('"'):
        return re.sub(r"\\(.)", r"\1", token[1:-1] if token.endswith('"') and len(token) > 1
                      else token[1:])
    return token


class _Parser:
    def __init__(self, text: str, comments: list[str]) -> None:
        self.tokens: list[str] = _TOKEN.findall(text)
        self.pos = 0
        self.comments = comments
        self.seen: list[str] = []  # comments passed since the current address began

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def words(self, stop: str) -> list[str]:
        """Tokens up to (not including) one of the `stop` specials."""
        out: list[str] = []
        while (token := self.peek()) is not None and token not in stop:
            self.next()
            comment = _COMMENT.fullmatch(token)
            if comment is None:
                out.append(token)
            elif self.comments[int(comment.group(1))]:
                self.seen.append(self.comments[int(comment.group(1))])
        return out

    def addr_spec(self, stop: str) -> tuple[str | None, str | None]:
        local = "".join(_word(w) for w in self.words("@" + stop))
        host = None
        if self.peek() == "@":
            self.next()
            host = "".join(self.words(stop))
        return local or None, host

    def angle(self, name: str | None) -> Address:
        route = None
        if self.peek() == "@":
            hops = self.words(":>")
            if self.peek() == ":":
                self.next()
                route = "".join(hops)
            else:  # not a route after all: "<@host>"
                self.pos -= len(hops)
        mailbox, host = self.addr_spec(">")
        if self.peek() == ">":
            self.next()
        return Address(name, route, mailbox, host)

    def mailbox(self) -> Address | None:
        phrase = self.words("<@,;:")
        token = self.peek()
        name = " ".join(_word(w) for w in phrase) or None
        if token == "<":
            self.next()
            return self.angle(name)
        if token == "@":
            self.next()
            host = "".join(self.words(",;<"))
            local = "".join(_word(w) for w in phrase)
            # obsolete but common: a comment after a bare address names it
            return Address(self.seen[-1] if self.seen else None, None, local or None, host)
        if phrase:
            return Address(None, None, "".join(_word(w) for w in phrase), None)
        return None


def parse_addresses(text: str) -> list[Address]:
    bare, comments = _strip_comments(text)
    parser = _Parser(bare, comments)
    out: list[Address] = []
    in_group = False
    while parser.peek() is not None and len(out) < MAX_ADDRESSES:
        token = parser.peek()
        if token == ",":
            parser.next()
            continue
        if token == ";":
            parser.next()
            if in_group:
                out.append(GROUP_END)
                in_group = False
            continue
        start = parser.pos
        parser.seen = []
        phrase = parser.words("<@,;:")
        if parser.peek() == ":" and not in_group:
            parser.next()
            out.append(Address(None, None, " ".join(_word(w) for w in phrase) or None, None))
            in_group = True
            continue
        parser.pos = start
        parser.seen = []
        address = parser.mailbox()
        if address is None:
            if parser.peek() is not None:
                parser.next()  # a stray special: skip it
            continue
        out.append(address)
    if in_group:
        out.append(GROUP_END)
    return out
