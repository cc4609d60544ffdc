"""Backend exceptions. Each one knows the IMAP reply (status, response code) it becomes, and
the SMTP reply where one applies, so connection loops have a single `except BackendError`.

`ClientError`s are caused by what the peer asked for; `ServerError`s are our failure.
"""

from __future__ import annotations


class BackendError(Exception):
    imap_status = "NO"
    imap_code: str | None = None
    smtp_reply = "451 4.3.0 Temporary server failure, try again later"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)
        self.message = message or (self.__class__.__doc__ or self.__class__.__name__).strip()
        if code is not None:
            self.imap_code = code

    def imap_reply(self, tag: str) -> bytes:
        code = f"[{self.imap_code}] " if self.imap_code else ""
        return f"{tag} {self.imap_status} {code}{self.message}\r\n".encode()


class ClientError(BackendError):
    """The request cannot be honoured"""


class ServerError(BackendError):
    """Internal server error"""

    imap_code = "SERVERBUG"


class Unavailable(ServerError):
    """Service temporarily unavailable"""

    imap_code = "UNAVAILABLE"


class NoMajority(Unavailable):
    """This server cannot reach a majority of the pool; changes are refused until it can"""


class MailboxNotFound(ClientError):
    """No such mailbox"""

    imap_code = "NONEXISTENT"


class MailboxExists(ClientError):
    """Mailbox already exists"""

    imap_code = "ALREADYEXISTS"


class NotPermitted(ClientError):
    """Operation not permitted"""

    imap_code = "NOPERM"


class CannotDo(ClientError):
    """Operation not possible"""

    imap_code = "CANNOT"


class UserNotFound(ClientError):
    """No such user"""

    imap_code = "NONEXISTENT"
    smtp_reply = "550 5.1.1 No such user here"


class UserExists(ClientError):
    """User already exists"""

    imap_code = "ALREADYEXISTS"


class InvalidUser(ClientError):
    """User id must be an e-mail address in one of this node's domains"""

    imap_code = "CANNOT"


class MessageTooLarge(ClientError):
    """Message exceeds the size limit"""

    imap_code = "TOOBIG"
    smtp_reply = "552 5.3.4 Message too big for system"


class LimitExceeded(ClientError):
    """The request exceeds a limit of this server"""

    imap_code = "LIMIT"
    smtp_reply = "552 5.3.4 Message exceeds a limit of this server"
