"""aiosmtpd hooks for mail intake: who may receive, and durable delivery into the store.

aiosmtpd calls `handle_<VERB>(server, session, envelope, ...)` and sends the string returned.
The hooks never block: every store call is awaited. DATA is answered 250 only after
`store.deliver` returned, i.e. after the message was committed (fsync'd).

Recipients are local users or boards (`board+NAME@DOMAIN`) in this node's domains; anything else
is refused at RCPT. Local parts are matched as given first, then lower-cased, so
`Alice@EXAMPLE.test` reaches `alice@example.test` whichever way the store spells user ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from mailmux.backend.config import BackendConfig
from mailmux.backend.errors import BackendError, LimitExceeded
from mailmux.backend.gatewaykeys import GatewayKeys
from mailmux.backend.load import LoadMeter
from mailmux.backend.message.limits import check_structure
from mailmux.backend.smtp import replies
from mailmux.backend.smtp.headers import Trace, new_guid, received_header, with_protocol
from mailmux.backend.smtp.protocol import IntakeSMTP
from mailmux.backend.store.interface import MailStore
from mailmux.backend.store.replay import REPLAY, Replayed
from mailmux.outbound import intake as outbound_intake

if TYPE_CHECKING:
    from mailmux.outbound.worker import OutboundWorker

log = logging.getLogger(__name__)

BOARD_ADDRESS_PREFIX = "board+"
MAX_RECIPIENTS = 1000  # RFC 5321 4.5.3.1.8 asks for at least 100


class RecipientRejected(Exception):
    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class IntakeHandler:
    def __init__(self, config: BackendConfig, store: MailStore, meter: LoadMeter) -> None:
        self.config = config
        self.store = store
        self.meter = meter
        self.closing = False  # set by SmtpIntake.close: no new transactions
        self.outbound: OutboundWorker | None = None  # the node's outbound queue, if enabled
        self.keys = GatewayKeys(config.pool_secret)  # the node gives it the store's keys
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()

    # hooks ------------------------------------------------------------------------------

    async def auth_XMAILMUX(self, server: SMTP, args: list[str]) -> AuthResult:
        """A pool gateway handing over mail for outside recipients (outbound/gateway_auth.py)."""
        return await outbound_intake.authenticate(server, args, self.config.pool_secret,
                                                  self.keys.secret)

    async def handle_EHLO(
        self,
        server: IntakeSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With this hook present aiosmtpd leaves recording the name to us.
        session.host_name = hostname
        # Drop aiosmtpd's "250 HELP" and its (empty: no mechanisms) AUTH line.
        kept = [line for line in responses[:-1] if not line.startswith("250-AUTH")]
        return [*kept, "250-ENHANCEDSTATUSCODES", "250-XREPLAY", "250 PIPELINING"]

    async def handle_MAIL(
        self,
        server: IntakeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.closing:
            return replies.SHUTTING_DOWN
        if not self._may_submit(session):
            # Checked before any RCPT, so outsiders cannot probe which users exist either.
            log.info("%s: refused, not in intake_networks", _peer(session))
            return "550 5.7.1 Mail is not accepted from your address here"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    def _may_submit(self, session: Session) -> bool:
        networks = self.config.intake_networks
        if networks is None:
            return True  # an MX port: mail from anywhere
        peer = session.peer
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in networks)

    async def handle_RCPT(
        self,
        server: IntakeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return replies.TOO_MANY_RECIPIENTS
        if (self.outbound is not None and not server.reply_per_recipient
                and outbound_intake.from_gateway(session)
                and "@" in address and not self.config.serves_domain(address)):
            envelope.rcpt_tos.append(address)
            return replies.RECIPIENT_OK
        try:
            recipient = await self.resolve(address)
        except RecipientRejected as exc:
            log.info("%s: refused recipient %r: %s", _peer(session), address, exc.reply)
            return exc.reply
        except Exception:
            log.exception("%s: store failed looking up recipient %r", _peer(session), address)
            return replies.TEMPORARY_FAILURE
        # The same mailbox named twice (or in two spellings) gets one copy: SMTP drops the
        # repeat here; LMTP owes a reply per accepted RCPT, and the store's GUID check keeps
        # the second delivery a no-op.
        if server.reply_per_recipient or recipient not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(recipient)
            envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: IntakeSMTP, session: Session, envelope: Envelope) -> str:
        body = envelope.original_content or b""
        try:
            await asyncio.to_thread(check_structure, body, self.config.max_mime_parts,
                                    self.config.max_mime_depth)
        except LimitExceeded as exc:
            log.info("%s: refused a message: %s", _peer(session), exc.message)
            return f"554 5.6.0 {exc.message}"
        recipients = list(envelope.rcpt_tos)
        # Every transaction is a new message; a gateway's replay is known by its XREPLAY id,
        # never by a header the sender could copy (an X-Mailmux-GUID is just a header now).
        guid = new_guid()
        message = received_header(self._trace(server, session, envelope, guid)) + body
        # LMTP stores per recipient, so one transaction id cannot name its effect there.
        replayable = None if server.reply_per_recipient else envelope
        with self._delivery(), _replay_id(replayable):
            outside = [r for r in recipients if not self.config.serves_domain(r)]
            if outside:
                sender = envelope.mail_from or ""
                failure = await self._queue(sender, outside, message, guid, session)
                recipients = [r for r in recipients if r not in outside]
                if failure or not recipients:
                    return failure or replies.queued(guid)
            if not server.reply_per_recipient:
                return await self._deliver_all(recipients, message, guid, session)
            lines = await asyncio.gather(
                *(self._deliver_one(r, message, guid, session) for r in recipients)
            )
        # RFC 2033: one reply per recipient in RCPT order; aiosmtpd sends the one we return.
        for line in lines[:-1]:
            await server.push(line)
        return lines[-1]

    # recipients -------------------------------------------------------------------------

    async def resolve(self, address: str) -> str:
        """The store's spelling of a local recipient, or RecipientRejected with the reply."""
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            raise RecipientRejected(replies.BAD_ADDRESS)
        domain = domain.lower()
        if domain not in self.config.domains:
            raise RecipientRejected(replies.RELAY_DENIED)
        if local.lower().startswith(BOARD_ADDRESS_PREFIX):
            name = local[len(BOARD_ADDRESS_PREFIX) :]
            board = await _first_known(self.store.has_board, (name, name.lower()))
            if board is not None:
                return f"{BOARD_ADDRESS_PREFIX}{board}@{domain}"
        else:
            user = await _first_known(
                self.store.has_user, (f"{local}@{domain}", f"{local.lower()}@{domain}")
            )
            if user is not None:
                return user
        raise RecipientRejected(replies.no_such_user(address))

    # delivery ---------------------------------------------------------------------------

    async def _deliver_all(
        self, recipients: Sequence[str], message: bytes, guid: str, session: Session
    ) -> str:
        failure = await self._store(recipients, message, guid, session)
        return failure or replies.queued(guid)

    async def _deliver_one(
        self, recipient: str, message: bytes, guid: str, session: Session
    ) -> str:
        failure = await self._store([recipient], message, guid, session)
        return failure or replies.delivered_to(recipient, guid)

    async def _queue(self, sender: str, recipients: Sequence[str], message: bytes, guid: str,
                     session: Session) -> str | None:
        """None once the outbound queue holds the message on W nodes, else the failure reply."""
        assert self.outbound is not None, "RCPT admits outside recipients only with a queue"
        try:
            with self.meter.transaction():
                fresh = await self.outbound.submit(guid, sender, list(recipients), message)
        except BackendError as exc:
            log.warning("%s: queueing %s for %s failed: %s", _peer(session), guid, recipients, exc)
            return exc.smtp_reply
        except Exception:
            log.exception("%s: queueing %s for %s failed", _peer(session), guid, recipients)
            return replies.TEMPORARY_FAILURE
        log.info("%s: queued %s for %s%s", _peer(session), guid, ", ".join(recipients),
                 "" if fresh else " (replay, already queued)")
        return None

    async def _store(
        self, recipients: Sequence[str], message: bytes, guid: str, session: Session
    ) -> str | None:
        """None once the message is durable for every recipient, else the failure reply."""
        peer = _peer(session)
        try:
            with self.meter.transaction():
                results = await self.store.deliver(recipients, message, guid)
        except Replayed as exc:
            original = str(exc.answer.get("guid") or guid)
            log.info("%s: replay of %s to %s: already stored", peer, original,
                     ", ".join(recipients))
            return replies.queued(original)  # the original answer
        except BackendError as exc:
            log.warning("%s: delivery of %s to %s failed: %s", peer, guid, recipients, exc)
            return exc.smtp_reply
        except Exception:
            log.exception("%s: store failed delivering %s to %s", peer, guid, recipients)
            return replies.TEMPORARY_FAILURE
        replayed = bool(results) and all(r.duplicate for r in results)
        log.info(
            "%s: delivered %s to %s%s",
            peer, guid, ", ".join(recipients), " (replay, already stored)" if replayed else "",
        )
        return None

    def _trace(
        self, server: IntakeSMTP, session: Session, envelope: Envelope, guid: str
    ) -> Trace:
        peer = session.peer
        return Trace(
            helo=session.host_name,
            peer_ip=str(peer[0]) if isinstance(peer, tuple) and peer else None,
            by=self.config.node_id,
            protocol=with_protocol(
                lmtp=server.reply_per_recipient,
                extended=session.extended_smtp,
                tls=session.ssl is not None,
                utf8=envelope.smtp_utf8,
            ),
            guid=guid,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
            when=datetime.now(UTC).astimezone(),
        )

    # shutdown ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _delivery(self) -> Iterator[None]:
        """Counts deliveries in progress so that shutdown can wait for their answers."""
        self._in_flight += 1
        self._drained.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

    async def drain(self, timeout: float) -> bool:
        """Wait for deliveries in progress; False if some were still running at the timeout."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def _first_known(
    exists: Callable[[str], Awaitable[bool]], candidates: Sequence[str]
) -> str | None:
    for candidate in dict.fromkeys(candidates):
        if await exists(candidate):
            return candidate
    return None


@contextlib.contextmanager
def _replay_id(envelope: Envelope | None) -> Iterator[None]:
    """Makes the transaction's XREPLAY id (if the gateway sent one) the store's replay id."""
    options = envelope.mail_options if envelope is not None else []
    found = [o.partition("=")[2] for o in options if o.upper().startswith("XREPLAY=")]
    token = REPLAY.set(found[-1] if found else None)
    try:
        yield
    finally:
        REPLAY.reset(token)


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
