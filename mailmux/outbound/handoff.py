"""The gateway's side of outbound submission: hand the message for outside recipients to a node's
intake, authenticated as a pool gateway (AUTH XMAILMUX), and take its 250 as "durable in the
outbound queue on W nodes". A node that cannot reach enough copies answers 451; the gateway then
tries the next node, and with none left tells the client 451 4.3.0 (it keeps the message).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence

import aiosmtplib

from mailmux.outbound.gateway_auth import MECHANISM, answer
from mailmux.protocol.control.keys import Credential

log = logging.getLogger(__name__)

Address = tuple[str, int]


class HandoffRefused(Exception):
    """A node refused the recipients permanently (5xx): the reply to give the client."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class HandoffFailed(Exception):
    """This node did not queue the message; another may."""


async def hand_off(address: Address, secret: Credential, sender: str, recipients: Sequence[str],
                   message: bytes, timeout: float) -> None:
    client = aiosmtplib.SMTP(hostname=address[0], port=address[1], timeout=timeout,
                             start_tls=False, use_tls=False)
    try:
        await client.connect()
        await client.ehlo()
        challenge = await client.execute_command(b"AUTH", MECHANISM.encode())
        if challenge.code != 334:
            raise HandoffFailed(f"AUTH {MECHANISM}: {challenge.code} {challenge.message}")
        reply = await client.execute_command(
            base64.b64encode(answer(secret, base64.b64decode(challenge.message))))
        if reply.code != 235:
            raise HandoffFailed(f"AUTH {MECHANISM} refused: {reply.code} {reply.message}")
        refused, _ = await client.sendmail(sender, list(recipients), message)
        if refused:
            code, text = next(iter(refused.values()))
            raise HandoffRefused(f"{code} {text}")
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0]
        if first.code >= 500:
            raise HandoffRefused(f"{first.code} {first.message}") from exc
        raise HandoffFailed(str(exc)) from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
        raise HandoffFailed(str(exc) or type(exc).__name__) from exc
    finally:
        client.close()
