"""The IMAP codec's exceptions: every malformed input ends in one of these, never another."""

from __future__ import annotations


class ImapProtocolError(Exception):
    """Base of the codec's errors."""


class ParseError(ImapProtocolError):
    """A command that cannot be parsed; `tag` is set whenever one could be read."""

    def __init__(self, tag: str | None, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.code = code
