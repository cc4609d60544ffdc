"""LMTP (RFC 2033) intake: the SMTP intake protocol with LHLO, and one reply per recipient.

aiosmtpd's LMTP class answers DATA with a single reply whatever the number of recipients;
RFC 2033 section 4.2 wants one per accepted recipient, in RCPT order, so that a recipient whose
delivery fails gets its own 4xx/5xx while the others succeed. `reply_per_recipient` tells the
handler to deliver per recipient and write those replies (`IntakeHandler.handle_DATA`).
"""

from __future__ import annotations

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import syntax

from mailmux.backend.smtp.protocol import IntakeSMTP


class IntakeLMTP(IntakeSMTP, LMTP):
    """HELO and EHLO reach aiosmtpd's LMTP class through IntakeSMTP, which refuses them."""

    reply_per_recipient = True
    metrics_protocol = "lmtp"
    ident = "mailmux LMTP"

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, hostname: str) -> None:
        with self.plain_replies():
            await LMTP.smtp_LHLO(self, hostname)
