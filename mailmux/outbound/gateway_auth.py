"""How a node's intake knows a transaction comes from a gateway of its pool (and may therefore
carry recipients outside the pool's domains): SMTP AUTH with the private mechanism XMAILMUX.

The node sends a random challenge; the gateway answers `NAME HMAC` with its gateway key (see
protocol/control/keys.py), keyed by a key derived for this use only; a holder of the pool secret
may answer HMAC-SHA256(pool secret, context + challenge) alone. No secret crosses the wire and
an answer is worth one connection only. Anyone else on the intake port is a stranger: mail for
outside domains gets 550 5.7.1 (no open relay).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from mailmux.protocol.control.keys import Credential, GatewayKey

MECHANISM = "XMAILMUX"
_CONTEXT = b"mailmux-outbound-handoff\0"
_GATEWAY_LABEL = b"mailmux gateway handoff v1"
CHALLENGE_BYTES = 32


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_BYTES).hex().encode()


def answer(secret: Credential, challenge: bytes) -> bytes:
    if isinstance(secret, GatewayKey):
        mac = hmac.new(secret.derive(_GATEWAY_LABEL), _CONTEXT + challenge, hashlib.sha256)
        return secret.name.encode() + b" " + mac.hexdigest().encode()
    return hmac.new(secret, _CONTEXT + challenge, hashlib.sha256).hexdigest().encode()


def verify(secret: bytes, challenge: bytes, response: bytes,
           gateway_secret: Callable[[str], bytes | None] = lambda name: None) -> str | None:
    """Who answered: "pool" for the pool secret, the gateway key's name, or None (refused)."""
    name, space, _ = response.strip().partition(b" ")
    if space:
        try:
            key_name = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        key_secret = gateway_secret(key_name)
        if key_secret is None:
            return None
        expected = answer(GatewayKey(key_name, key_secret), challenge)
        return key_name if hmac.compare_digest(expected, response.strip()) else None
    return "pool" if hmac.compare_digest(answer(secret, challenge), response.strip()) else None
