"""Delivery status notifications (RFC 3464 multipart/report) for the sender's INBOX.

Built as bytes by hand: the three parts are a human-readable explanation naming each recipient
and the remote server's answer, the machine-readable `message/delivery-status`, and the original
message's header (`text/rfc822-headers`, RFC 6522), so a client can show what bounced without
the report carrying the whole message again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate

MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class RecipientReport:
    address: str
    action: str  # failed / delayed
    status: str  # enhanced status code, e.g. 5.1.1
    diagnostic: str  # the remote answer, e.g. "550 5.1.1 <x@y>: no such user"
    remote: str = ""  # the host that answered, if any


def status_of(diagnostic: str, action: str) -> str:
    parts = diagnostic.split()
    if len(parts) > 1 and parts[1][:1] in "245" and parts[1].count(".") == 2:
        return parts[1]
    return "5.0.0" if action == "failed" else "4.0.0"


def original_headers(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    head = message[: end + 2] if end >= 0 else message
    return head[:MAX_HEADER_BYTES]


def report_id(message_id: str, kind: str, recipients: Sequence[str]) -> str:
    """Stable per (message, kind, recipients): a report written again after a takeover
    has the same GUID, so the sender's INBOX keeps one."""
    raw = "\0".join([message_id, kind, *sorted(recipients)]).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def build(*, reporting_mta: str, sender: str, message_id: str, arrival: float,
          reports: Sequence[RecipientReport], original: bytes, now: datetime | None = None,
          ) -> bytes:
    when = now or datetime.now(UTC)
    delayed = all(r.action == "delayed" for r in reports)
    boundary = f"=_mailmux_{report_id(message_id, 'boundary', [r.address for r in reports])}"
    domain = sender.rpartition("@")[2] or reporting_mta
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    human = _human(reports, delayed)
    status = _status_part(reporting_mta, message_id, arrival, reports)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{domain}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{report_id(message_id, 'dsn', [r.address for r in reports])}@{domain}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        human,
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        status,
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(lines).encode() + b"\r\n" + original_headers(original)
    return head + f"\r\n--{boundary}--\r\n".encode()


def _human(reports: Sequence[RecipientReport], delayed: bool) -> str:
    if delayed:
        intro = ("Your message has not been delivered yet to the recipients below. The mail "
                 "system keeps trying; you do not need to send it again.")
    else:
        intro = ("Your message could not be delivered to the recipients below. The answer of "
                 "the receiving mail server is quoted for each.")
    body = [intro, ""]
    for r in reports:
        where = f" (from {r.remote})" if r.remote else ""
        body.append(f"<{r.address}>{where}:")
        body.append(f"    {r.diagnostic}")
        body.append("")
    return "\r\n".join(body)


def _status_part(reporting_mta: str, message_id: str, arrival: float,
                 reports: Sequence[RecipientReport]) -> str:
    fields = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Mailmux-Queue-ID: {message_id}",
        f"Arrival-Date: {formatdate(arrival)}",
        "",
    ]
    for r in reports:
        fields += [f"Final-Recipient: rfc822; {r.address}", f"Action: {r.action}",
                   f"Status: {r.status}"]
        if r.remote:
            fields.append(f"Remote-MTA: dns; {r.remote}")
        fields += [f"Diagnostic-Code: smtp; {r.diagnostic}", ""]
    return "\r\n".join(fields)
