"""The node intake's side of the gateway hand-off: the XMAILMUX AUTH exchange (see
`gateway_auth.py`) and the test a recipient outside the pool's domains must pass."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session

from mailmux.outbound.gateway_auth import new_challenge, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolGateway:
    """`session.auth_data` of a transaction a pool gateway authenticated."""

    name: str = "gateway"


async def authenticate(server: SMTP, args: list[str], secret: bytes,
                       gateway_secret: Callable[[str], bytes | None] = lambda name: None,
                       ) -> AuthResult:
    if len(args) != 1:
        return AuthResult(success=False, handled=False, message="501 5.5.2 Bad AUTH data")
    challenge = new_challenge()
    raw = await server.challenge_auth(challenge.decode(), encode_to_b64=True)
    if raw is MISSING or not isinstance(raw, bytes):
        return AuthResult(success=False, handled=False, message="501 5.5.2 Bad AUTH data")
    who = verify(secret, challenge, raw, gateway_secret)
    if who is None:
        log.warning("intake: XMAILMUX authentication from %s failed", server.session.peer
                    if server.session else "?")
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Authentication credentials invalid")
    return AuthResult(success=True, auth_data=PoolGateway(who))


def from_gateway(session: Session) -> bool:
    return isinstance(session.auth_data, PoolGateway)
