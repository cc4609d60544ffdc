"""The gateway's exceptions. Each knows how it is answered to an IMAP or SMTP client."""

from __future__ import annotations


class GatewayError(Exception):
    imap_code = "SERVERBUG"
    smtp_reply = "451 4.3.0 Temporary gateway failure, try again later"


class NoBackend(GatewayError):
    """No pool member that serves the user could be reached."""

    imap_code = "UNAVAILABLE"
    smtp_reply = "451 4.3.0 No mail server is available right now, try again later"


class UnknownUser(NoBackend):
    """Pool members answered and none serves the user: told apart only in the log, answered
    exactly like a wrong password so that nobody can probe which users exist."""


class AuthenticationFailed(GatewayError):
    """The backend refused the credentials: final, never retried on another node."""

    imap_code = "AUTHENTICATIONFAILED"
    smtp_reply = "535 5.7.8 Authentication credentials invalid"


class BackendLost(GatewayError):
    """The backend connection failed or timed out; the caller may fail over."""

    imap_code = "UNAVAILABLE"


class Refused(GatewayError):
    """The node refused a change without making it (NO [UNAVAILABLE]): it may be made again,
    on the user's home once one holds the lease."""

    imap_code = "UNAVAILABLE"

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"{node}: {reason}")
        self.node, self.reason = node, reason
