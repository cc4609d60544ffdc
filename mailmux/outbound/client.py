"""One delivery attempt to one destination: the hosts of a route in order, several recipients.

Outcome per recipient: `sent` (2xx after DATA), `failed` (a 5xx for that recipient, or for the
whole transaction), or `pending` (4xx, or no host could be reached: try again later). A host
that cannot be connected to, or greets or answers MAIL with an error, makes us try the next host;
a recipient answer is final for this attempt (RFC 5321 5.1: the MX that answered is the one).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosmtplib

from mailmux.outbound.config import OutboundConfig
from mailmux.outbound.routes import Host, Route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    state: str  # sent / failed / pending
    code: int
    text: str
    host: str = ""

    def as_json(self) -> dict[str, object]:
        return {"state": self.state, "code": self.code, "text": self.text, "host": self.host}


MaySend = Callable[[], Awaitable[bool]] | None


def _mail_options(client: aiosmtplib.SMTP, sender: str, recipients: Sequence[str],
                  body: bytes) -> list[str] | None:
    """MAIL FROM parameters; None when the message needs SMTPUTF8 and the server lacks it."""
    options = []
    if not all(a.isascii() for a in (sender, *recipients)):
        if not client.supports_extension("smtputf8"):
            return None
        options.append("SMTPUTF8")
    if not body.isascii() and client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    return options


class HostFailed(Exception):
    """This host could not take the transaction; the next one may."""


def _reply(exc: aiosmtplib.SMTPResponseException) -> tuple[int, str]:
    return exc.code, f"{exc.code} {exc.message}"


class Deliverer:
    def __init__(self, config: OutboundConfig, helo_name: str) -> None:
        self.config = config
        self.helo_name = helo_name
        self._password = config.relay_password()
        self._contexts: dict[bool, ssl.SSLContext] = {}  # built once: loading CAs is slow

    def _tls_context(self, route: Route) -> ssl.SSLContext:
        context = self._contexts.get(route.verify)
        if context is not None:
            return context
        if route.verify:
            ca = self.config.relay_ca_file
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
        else:
            # Opportunistic TLS to MX hosts (RFC 7435): encrypt when offered, any certificate.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._contexts[route.verify] = context
        return context

    async def send(self, route: Route, sender: str, recipients: Sequence[str], body: bytes,
                   may_send: MaySend = None) -> dict[str, Outcome]:
        """`may_send` is asked right before DATA: False (the lease was lost) ends the
        transaction without sending, and the recipients it accepted get no outcome."""
        last = "451 4.4.1 no mail host could be reached"
        for host in route.hosts:
            try:
                return await self._transaction(route, host, sender, recipients, body, may_send)
            except HostFailed as exc:
                last = str(exc)
                log.info("outbound: %s (%s:%d): %s", host.name, host.address, host.port, last)
        return {r: Outcome("pending", int(last[:3]) if last[:3].isdigit() else 451, last)
                for r in recipients}

    async def _transaction(self, route: Route, host: Host, sender: str,
                           recipients: Sequence[str], body: bytes,
                           may_send: MaySend) -> dict[str, Outcome]:
        client = aiosmtplib.SMTP(
            hostname=host.address, port=host.port, local_hostname=self.helo_name,
            timeout=self.config.timeout, use_tls=route.tls == "tls", start_tls=False,
            tls_context=self._tls_context(route) if route.tls != "none" else None,
            validate_certs=route.verify,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise HostFailed(f"451 4.4.1 connection to {host.name} failed: {exc}") from exc
        try:
            return await self._converse(client, route, host, sender, recipients, body, may_send)
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise HostFailed(f"451 4.4.2 {host.name} closed the connection: {exc}") from exc
        except (OSError, TimeoutError, aiosmtplib.SMTPTimeoutError) as exc:
            raise HostFailed(f"451 4.4.2 {host.name}: {exc or type(exc).__name__}") from exc
        finally:
            client.close()

    async def _converse(self, client: aiosmtplib.SMTP, route: Route, host: Host, sender: str,
                        recipients: Sequence[str], body: bytes,
                        may_send: MaySend) -> dict[str, Outcome]:
        await self._secure(client, route, host)
        options = _mail_options(client, sender, recipients, body)
        if options is None:
            text = f"553 5.6.7 {host.name} does not support SMTPUTF8 (internationalised address)"
            return {r: Outcome("failed", 553, text, host.name) for r in recipients}
        try:
            await client.mail(sender, options=options)
        except aiosmtplib.SMTPResponseException as exc:
            code, text = _reply(exc)
            if code >= 500:
                return {r: Outcome("failed", code, text, host.name) for r in recipients}
            raise HostFailed(text) from exc
        outcomes: dict[str, Outcome] = {}
        accepted = []
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                code, text = _reply(exc)
                outcomes[rcpt] = Outcome("failed" if code >= 500 else "pending", code, text,
                                         host.name)
        if accepted and may_send is not None and not await may_send():
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.rset()
            return outcomes
        if accepted:
            try:
                response = await client.data(body)
                done = Outcome("sent", response.code, f"{response.code} {response.message}",
                               host.name)
            except aiosmtplib.SMTPResponseException as exc:
                code, text = _reply(exc)
                done = Outcome("failed" if code >= 500 else "pending", code, text, host.name)
            outcomes.update({r: done for r in accepted})
        # The transaction is over; a rude goodbye changes nothing.
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit()
        return outcomes

    async def _secure(self, client: aiosmtplib.SMTP, route: Route, host: Host) -> None:
        try:
            await client.ehlo()
            if route.tls in ("starttls", "opportunistic"):
                if client.supports_extension("starttls"):
                    await client.starttls(server_hostname=host.name)
                elif route.tls == "starttls":
                    raise HostFailed(f"451 4.7.0 {host.name} does not offer STARTTLS")
            if self.config.relay_user is not None and self._password is not None and route.verify:
                await client.login(self.config.relay_user, self._password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise HostFailed(f"451 4.7.8 {host.name} refused our credentials: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise HostFailed(_reply(exc)[1]) from exc
