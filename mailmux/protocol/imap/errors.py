"""The IMAP codec's exceptions: every malformed input ends in one of these, never another."""

from __future__ import annotations


class ImapProtocolError(Exception):
    """Base of the codec's errors."""


class ParseError(ImapProtocolError):
    """A command that cannot be parsed; `tag` is set whenever one could be read.

    `status` is "BAD" for broken syntax and "NO" for a well-formed command naming something
    that cannot exist (a mailbox name that is not valid modified UTF-7).
    """

    def __init__(self, tag: str | None, message: str, code: str | None = None,
                 status: str = "BAD") -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.code = code
        self.status = status
