"""SMTP reply texts, and enhanced status codes (RFC 2034 / RFC 3463) for aiosmtpd's own replies.

Once a server advertises ENHANCEDSTATUSCODES every reply except the greeting and the EHLO
response must carry one. Our handler writes them itself; aiosmtpd's built-in replies ("503 Error:
need MAIL command", "552 Error: Too much mail data", ...) do not, so the protocol classes pass
every outgoing line through `with_enhanced_code`, which adds the generic code for the reply.
"""

from __future__ import annotations

import re

RELAY_DENIED = "550 5.7.1 Relaying denied"
TEMPORARY_FAILURE = "451 4.3.0 Temporary server failure, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
SENDER_OK = "250 2.1.0 Ok"
RECIPIENT_OK = "250 2.1.5 Ok"
BAD_ADDRESS = "553 5.1.3 Bad recipient address syntax"


def no_such_user(address: str) -> str:
    return f"550 5.1.1 <{address}>: no such user"


def queued(guid: str) -> str:
    return f"250 2.0.0 Ok: queued as {guid}"


def delivered_to(recipient: str, guid: str) -> str:
    """One LMTP per-recipient reply; it still ends in 'queued as GUID' like the SMTP one."""
    return f"250 2.0.0 <{recipient}> Ok: queued as {guid}"


_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
# Generic detail per basic code (RFC 3463 section 3); 220, 334 and 354 carry none.
_DEFAULT_DETAIL = {
    "221": "2.0.0",
    "250": "2.0.0",
    "421": "4.3.0",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}


def with_enhanced_code(reply: str) -> str:
    """'503 Error: need MAIL command' → '503 5.5.1 Error: need MAIL command'."""
    if _ENHANCED.match(reply):
        return reply
    code, separator, text = reply[:3], reply[3:4], reply[4:]
    detail = _DEFAULT_DETAIL.get(code)
    if detail is None or separator not in (" ", "-", ""):
        return reply
    return f"{code}{separator or ' '}{detail} {text}".rstrip()
