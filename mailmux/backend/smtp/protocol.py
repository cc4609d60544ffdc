"""The SMTP and LMTP connection protocols: aiosmtpd's, adjusted for the intake.

aiosmtpd does the command parsing, dot-unstuffing and size accounting; the handler
(`handler.py`) decides what to accept. What these subclasses add:

- enhanced status codes on aiosmtpd's own replies (see `replies.py`), except where RFC 2034
  exempts the reply (greeting, HELO/EHLO/LHLO response);
- per-connection command limits (aiosmtpd keeps them in a class-level dict that every
  connection's EHLO grows and every new connection clears);
- data lines up to `max_line_length` rather than RFC 5321's 1000 octets: real mail breaks that
  limit and rejecting it after the whole DATA phase helps nobody;
- session accounting for the load meter and for graceful shutdown (`SessionTracker`).

The LMTP variant is in `lmtp.py`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Iterator
from typing import Any, AnyStr, Protocol, cast

from aiosmtpd.smtp import SMTP, syntax

from mailmux.backend.config import BackendConfig
from mailmux.backend.smtp.replies import SHUTTING_DOWN, with_enhanced_code
from mailmux.backend.store.replay import valid_id
from mailmux.smtpsession import Session

SESSION_TIMEOUT = 300.0  # RFC 5321 4.5.3.2.7: the server timeout should be at least 5 minutes


class SessionTracker(Protocol):
    def opened(self, protocol: IntakeSMTP) -> None: ...
    def closed(self, protocol: IntakeSMTP) -> None: ...


class IntakeSMTP(SMTP):
    reply_per_recipient = False
    metrics_protocol = "smtp"
    ident = "mailmux ESMTP"

    def __init__(
        self,
        handler: Any,
        *,
        config: BackendConfig,
        tracker: SessionTracker,
        tls_context: ssl.SSLContext | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # Both must exist before aiosmtpd's __init__ reads them.
        self.line_length_limit = max(config.max_line_length, SMTP.line_length_limit)
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self._tracker = tracker
        self._tracked = False
        self._plain_replies = False
        super().__init__(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            hostname=config.node_id,
            ident=self.ident,
            tls_context=tls_context,
            timeout=SESSION_TIMEOUT,
            # No user AUTH: strangers may only deliver to local recipients (no relaying).
            auth_exclude_mechanism=("LOGIN", "PLAIN"),
            # The one mechanism left is the pool gateway's challenge-response (no password on
            # the wire), which must work on loopback without TLS.
            auth_require_tls=False,
            loop=loop,
        )

    def _create_session(self) -> Session:
        return Session(self.loop)  # without aiosmtpd's login_data deprecation log line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # STARTTLS calls this again with the TLS transport: still the same session.
        if not self._tracked:
            self._tracked = True
            self._tracker.opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            if self._tracked:
                self._tracked = False
                self._tracker.closed(self)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self._plain_replies:
            status = with_enhanced_code(status)
        await super().push(status)

    def shut_down(self) -> None:
        """Tell the client we are going (best effort) and close the connection."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # a cast, not an isinstance check: uvloop's transports are no asyncio subclasses
            cast(asyncio.WriteTransport, transport).write(SHUTTING_DOWN.encode() + b"\r\n")
            transport.close()

    @contextlib.contextmanager
    def plain_replies(self) -> Iterator[None]:
        """Replies RFC 2034 exempts from enhanced codes (HELO/EHLO/LHLO responses)."""
        self._plain_replies = True
        try:
            yield
        finally:
            self._plain_replies = False

    def _getparams(self, params: Any) -> dict[str, Any] | None:
        # The gateway's `MAIL FROM:<a> XREPLAY=<id>` (mailmux.backend.store.replay): taken
        # out here so that aiosmtpd does not refuse it as unknown; the handler reads it from
        # the envelope's mail options. A malformed id is a syntax error (501).
        found: dict[str, Any] | None = super()._getparams(params)
        if found is not None and "XREPLAY" in found:
            value = found.pop("XREPLAY")
            if not isinstance(value, str) or not valid_id(value):
                return None
        return found

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        with self.plain_replies():
            await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        with self.plain_replies():
            await super().smtp_EHLO(hostname)

