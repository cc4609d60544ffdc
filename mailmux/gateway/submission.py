"""The client-facing SMTP submission server (aiosmtpd) and its delivery to the pool.

What the client sees: AUTH PLAIN or LOGIN is required before MAIL FROM; the credentials are
checked by logging in to a backend that serves the user (the same path as IMAP, so the same
failover and the same "wrong password is final" rule). The envelope sender must be the
authenticated user. Recipients must be in the pool's domains (relaying comes later: 550 5.7.1)
and must be served by some pool member (550 5.1.1), which the gateway asks at RCPT time.

After DATA the gateway holds the whole message, gives the transaction a replay id (sent as
`MAIL FROM:<..> XREPLAY=<id>`) and hands it to the least-loaded live node serving the
recipients. A node that fails mid-transfer or answers 4xx is marked failed and the next
candidate gets the same bytes and id; a node that already holds that id's effect (stored there
or replicated to it) answers 250 without storing again, so a replay is stored once. 250 goes
to the client only after a backend said 250. Nobody left: 451 4.3.0, so the client keeps the
message and retries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import AnyStr, cast

import aiosmtplib
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from mailmux import metrics
from mailmux.backend.smtp.replies import with_enhanced_code
from mailmux.gateway.config import GatewayConfig
from mailmux.gateway.connector import connect
from mailmux.gateway.errors import AuthenticationFailed, NoBackend, UnknownUser
from mailmux.gateway.guard import peer_host, shared_penalty
from mailmux.gateway.message_id import strip_guid_header
from mailmux.gateway.pool import Pool
from mailmux.gateway.selection import Candidate, order
from mailmux.outbound.handoff import HandoffFailed, HandoffRefused, hand_off
from mailmux.smtpsession import Session as QuietSession

log = logging.getLogger(__name__)

Address = tuple[str, int]
SESSION_TIMEOUT = 300.0
UNAVAILABLE = "451 4.3.0 No mail server is available right now, try again later"


@dataclass(frozen=True)
class Credentials:
    user: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r})"


HEADER_ROOM = 4096  # what the gateway and the node add (stamp, Received, Sender)


class DeliveryRefused(Exception):
    """The pool refused the message or some recipients for good: the client's answer."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _refusal(refused: list[aiosmtplib.SMTPRecipientRefused]) -> Exception:
    """Refused recipients: 451 when any refusal is temporary (the client retries and the
    recipients already served store the same GUID once), else the 5xx naming them."""
    if any(r.code < 500 for r in refused):
        return NoBackend("recipients refused for now: " + ", ".join(
            f"{r.recipient} ({r.code})" for r in refused))
    names = ", ".join(f"<{r.recipient}>" for r in refused[:10])
    return DeliveryRefused(f"554 5.5.0 Not delivered to {names}: {refused[0].message}")


def from_addresses(content: bytes) -> list[str]:
    """The addresses in the message's From: header(s)."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(content)
    return [address for _, address in getaddresses(headers.get_all("From", [])) if address]


class SubmissionHandler:
    def __init__(self, config: GatewayConfig, pool: Pool) -> None:
        self.config = config
        self.pool = pool
        self.delivered = 0
        self.open = 0  # client connections

    # AUTH (handler hooks override aiosmtpd's built-in mechanisms) -------------------------

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = await _initial_or_challenge(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad AUTH data")
        parts = blob.split(b"\0")
        if len(parts) != 3:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad AUTH data")
        if parts[0] and parts[0].lower() != parts[1].lower():
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Cannot act as another user")
        return await self._verify(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        user = await _initial_or_challenge(server, args, "VXNlcm5hbWU6")  # "Username:"
        if user is None:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad AUTH data")
        password = await server.challenge_auth("Password:")
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad AUTH data")
        return await self._verify(server, user, password)

    async def _verify(self, server: SMTP, raw_user: bytes, raw_password: bytes) -> AuthResult:
        try:
            user, password = raw_user.decode(), raw_password.decode()
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad AUTH data")
        penalty = shared_penalty(self.pool, self.config.failed_login_delay)
        address = peer_host(server.session.peer if server.session is not None else None)
        started = time.monotonic()
        await asyncio.sleep(penalty.penalty(user, address))  # earned by earlier failures
        try:
            session = await connect(
                self.pool, user, password,
                policy=self.config.selection, timeout=self.config.request_timeout,
            )
        except (AuthenticationFailed, UnknownUser) as exc:
            log.info("submission: authentication of %s failed: %s", user, exc)
            await penalty.answer_failure(started, user, address)
            metrics.login("submission", False)
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Authentication credentials invalid")
        except NoBackend as exc:
            log.warning("submission: cannot check %s's credentials: %s", user, exc)
            return AuthResult(success=False, handled=False, message=UNAVAILABLE)
        penalty.succeeded(user, address)
        await session.close()
        metrics.login("submission", True)
        return AuthResult(success=True, auth_data=Credentials(user.lower()))

    # envelope -------------------------------------------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:
        user = _user(session)
        if address.lower() != user:
            return f"553 5.7.1 Sender <{address}> is not the authenticated user <{user}>"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.config.max_recipients})"
        domain = address.rpartition("@")[2].lower()
        domains = self.config.domains or (_user(session).rpartition("@")[2],)
        if domain not in domains:
            # Outside recipients go to the pool's outbound queue at DATA (mailmux/outbound/).
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return "250 2.1.5 Ok"
        answers = await self.pool.ask(address)
        if not answers:
            return UNAVAILABLE
        if not any(a.reply.serves for a in answers):
            return f"550 5.1.1 <{address}>: no such user here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        user = _user(session)
        content = envelope.original_content or b""
        if len(content) > self.config.max_message_size - HEADER_ROOM:
            return (f"552 5.3.4 Message too big (at most "
                    f"{self.config.max_message_size - HEADER_ROOM} octets)")
        strangers = [a for a in from_addresses(content) if a.lower() != user]
        if strangers:
            if self.config.sender_policy == "strict":
                return (f"553 5.7.1 From: <{strangers[0]}> is not the authenticated user "
                        f"<{user}>")
            content = f"Sender: <{user}>\r\n".encode() + content
        # One replay id per transaction: a retry on another node after a failure carries it,
        # and a node that already stored the transaction answers 250 without storing again.
        guid = uuid.uuid4().hex
        message = strip_guid_header(content)
        domains = self.config.domains or (user.rpartition("@")[2],)
        outside = [r for r in envelope.rcpt_tos if r.rpartition("@")[2].lower() not in domains]
        inside = [r for r in envelope.rcpt_tos if r not in outside]
        try:
            # Outside first: if the queue cannot take it the client retries the whole message
            # (nothing reached the pool recipients yet).
            node = await self._queue_outbound(user, envelope.mail_from, outside, message, guid)
            if inside:
                node = await self._deliver(envelope.mail_from, inside, message, guid)
        except (HandoffRefused, DeliveryRefused) as exc:
            return exc.reply
        except NoBackend as exc:
            log.warning("submission: %s from %s not delivered: %s", guid, user, exc)
            return UNAVAILABLE
        self.delivered += 1
        log.info("submission: %s from %s to %s accepted by %s",
                 guid, user, ", ".join(envelope.rcpt_tos), node)
        return f"250 2.0.0 Ok: queued as {guid}"

    async def _queue_outbound(self, user: str, sender: str | None, recipients: list[str],
                              message: bytes, guid: str) -> str:
        """Hand outside recipients to a node's outbound queue; its node id."""
        if not recipients:
            return ""
        reasons = []
        for candidate in await self._candidates([user]):
            try:
                await hand_off(candidate.smtp, self.config.gateway_key, sender or "", recipients,
                               message, 2 * self.config.request_timeout)
            except HandoffFailed as exc:
                reasons.append(f"{candidate.node_id}: {exc}")
                log.warning("submission: queueing %s on %s failed: %s", guid, candidate.node_id,
                            exc)
                continue
            return candidate.node_id
        raise NoBackend("; ".join(reasons) or "no live node to queue outbound mail")

    async def _deliver(self, sender: str | None, recipients: list[str], message: bytes,
                       guid: str) -> str:
        """Each recipient's copy goes to that user's home (the node that commits the user's
        changes): one transaction per home, so no home has to hand a user's lease to another
        node for one message. Each has its own replay id, derived from the recipients it
        carries, so a retry of one group elsewhere is recognised and the groups never take
        each other for replays."""
        groups = await self._by_home(recipients)
        if len(groups) == 1:
            return await self._deliver_to(sender, recipients, message, guid)
        done = await asyncio.gather(*(
            self._deliver_to(sender, group, message, _group_id(guid, group))
            for group in groups))
        return ",".join(done)

    async def _by_home(self, recipients: list[str]) -> list[list[str]]:
        found = await asyncio.gather(
            *(self.pool.discover(r, self.config.selection) for r in recipients))
        groups: dict[str, list[str]] = {}
        for recipient, candidates in zip(recipients, found, strict=True):
            home = next((c.node_id for c in candidates if c.home), "")
            groups.setdefault(home, []).append(recipient)
        return list(groups.values())

    async def _deliver_to(self, sender: str | None, recipients: list[str], message: bytes,
                          guid: str) -> str:
        reasons: list[str] = []
        tried: set[str] = set()
        # A second look after failures: the first answer (cached, or first-responder's
        # single yes) may have named only the nodes that just failed.
        for attempt in range(2):
            if attempt:
                for recipient in recipients:
                    self.pool.forget_answers(recipient)
            candidates = [c for c in await self._candidates(recipients)
                          if c.node_id not in tried]
            for candidate in candidates:
                tried.add(candidate.node_id)
                try:
                    result = await self._watched(candidate, aiosmtplib.send(
                        message,
                        sender=sender,
                        recipients=recipients,
                        mail_options=[f"XREPLAY={guid}"],
                        hostname=candidate.smtp[0],
                        port=candidate.smtp[1],
                        timeout=self.config.request_timeout,
                        start_tls=False,
                        use_tls=False,
                    ))
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    raise _refusal(exc.recipients) from exc
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code >= 500:
                        # The node judged the message, not its own health: the client gets the
                        # permanent answer (no retries, no quarantine).
                        raise DeliveryRefused(f"{exc.code} {exc.message}") from exc
                    reasons.append(f"{candidate.node_id}: {exc}")
                    log.warning("submission: %s to %s failed: %s", guid, candidate.node_id, exc)
                    self.pool.failed(candidate.node_id, str(exc))
                    continue
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    reasons.append(f"{candidate.node_id}: {exc}")
                    log.warning("submission: %s to %s failed: %s", guid, candidate.node_id, exc)
                    self.pool.failed(candidate.node_id, str(exc))
                    continue
                self.pool.succeeded(candidate.node_id)
                refused = result[0] if isinstance(result, tuple) and result else {}
                if refused:
                    # 250 means every recipient has it: a partial success is not one.
                    raise _refusal([aiosmtplib.SMTPRecipientRefused(r.code, r.message, str(rcpt))
                                    for rcpt, r in refused.items()])
                return candidate.node_id
        raise NoBackend("; ".join(reasons) or "no live node serves every recipient")

    async def _watched(self, candidate: Candidate, send: Awaitable[object]) -> object:
        """One transfer to one node, abandoned as soon as the heartbeat finds the node hung
        (a stopped node would otherwise hold the submission for the whole request_timeout)."""
        transfer = asyncio.ensure_future(send)
        hung: list[str] = []

        def on_hung(reason: str) -> None:
            hung.append(reason)
            transfer.cancel()

        watch = self.pool.heartbeat.register(candidate.node_id, candidate.control, on_hung)
        try:
            await asyncio.wait({transfer})
        finally:
            watch.cancel()
            transfer.cancel()
        if hung:
            raise TimeoutError(hung[0])
        return transfer.result()

    async def _candidates(self, recipients: list[str]) -> list[Candidate]:
        """Live nodes that serve every recipient, in selection order."""
        per_recipient = await asyncio.gather(
            *(self.pool.discover(r, self.config.selection) for r in recipients)
        )
        common: dict[str, Candidate] = {c.node_id: c for c in per_recipient[0]}
        for found in per_recipient[1:]:
            ids = {c.node_id for c in found}
            common = {k: v for k, v in common.items() if k in ids}
        return order(list(common.values()), self.config.selection)


def _group_id(guid: str, recipients: list[str]) -> str:
    """The replay id of one home's share of a transaction (valid XREPLAY characters)."""
    digest = hashlib.sha256("\n".join(sorted(r.lower() for r in recipients)).encode())
    return f"{guid}.{digest.hexdigest()[:12]}"


async def _initial_or_challenge(server: SMTP, args: list[str], prompt: str) -> bytes | None:
    # aiosmtpd passes the AUTH arguments: [mechanism] or [mechanism, initial-response].
    if len(args) >= 2:
        if args[1] == "=":
            return b""
        try:
            return base64.b64decode(args[1], validate=True)
        except binascii.Error:
            return None
    answer = await server.challenge_auth(prompt, encode_to_b64=False)
    return None if answer is MISSING or not isinstance(answer, bytes) else answer


def _user(session: Session) -> str:
    data = session.auth_data
    assert isinstance(data, Credentials), "aiosmtpd checks AUTH before MAIL/RCPT/DATA"
    return data.user


class SubmissionSMTP(SMTP):
    def __init__(self, handler: SubmissionHandler, *, config: GatewayConfig,
                 tls_context: ssl.SSLContext | None, loop: asyncio.AbstractEventLoop) -> None:
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.line_length_limit = max(config.max_line_length, SMTP.line_length_limit)
        super().__init__(
            handler,
            data_size_limit=config.max_message_size - HEADER_ROOM,
            enable_SMTPUTF8=True,
            hostname="mailmux-gateway",
            ident="mailmux submission",
            tls_context=tls_context,
            require_starttls=False,
            # AUTH is required (check_auth_needed below), but not through aiosmtpd's
            # auth_required flag: with auth_require_tls off it warns on every connection, and
            # loopback is the only plain-text listener the config allows
            # (require_tls_off_loopback).
            auth_required=False,
            auth_require_tls=tls_context is not None,
            timeout=SESSION_TIMEOUT,
            loop=loop,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not getattr(self, "_counted", False):  # STARTTLS calls this again: same session
            self._counted = True
            metrics.session_opened("submission")
            handler = self.event_handler
            assert isinstance(handler, SubmissionHandler)
            handler.open += 1
            if handler.open > handler.config.max_connections:
                self._hang_up(b"421 4.7.0 Too many connections, try again later\r\n")
                return
            # A stranger who never authenticates is sent away, as the IMAP side does.
            self._login_timer = self.loop.call_later(handler.config.login_timeout,
                                                     self._login_expired)

    def _login_expired(self) -> None:
        if self.session is None or not self.session.authenticated:
            self._hang_up(b"421 4.7.0 Login timeout\r\n")

    def _hang_up(self, reply: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # uvloop's transports are no asyncio.WriteTransport subclasses (same interface):
            # an isinstance check here left an over-cap client waiting on the default loop
            cast(asyncio.WriteTransport, transport).write(reply)
            transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if getattr(self, "_counted", False):
            self._counted = False
            metrics.session_closed("submission")
            handler = self.event_handler
            assert isinstance(handler, SubmissionHandler)
            handler.open -= 1
            timer = getattr(self, "_login_timer", None)
            if timer is not None:
                timer.cancel()

    async def check_auth_needed(self, caller_method: str) -> bool:
        """aiosmtpd asks this before MAIL, RCPT, DATA, VRFY...: refuse them until AUTH."""
        assert self.session is not None
        if self.session.authenticated:
            return False
        await self.push("530 5.7.0 Authentication required")
        return True

    def _create_session(self) -> Session:
        return QuietSession(self.loop)  # without aiosmtpd's login_data deprecation log line

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not status.startswith(("220", "250-", "250 ")):
            status = with_enhanced_code(status)
        await super().push(status)


class SubmissionServer:
    def __init__(self, config: GatewayConfig, pool: Pool,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.handler = SubmissionHandler(config, pool)
        self._tls = tls_context
        self._server: asyncio.Server | None = None

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SubmissionSMTP(self.handler, config=self.config, tls_context=self._tls,
                                   loop=loop),
            *self.config.listen_submission,
        )
        bound: Address = self._server.sockets[0].getsockname()[:2]
        log.info("submission listening on %s:%d", *bound)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None


