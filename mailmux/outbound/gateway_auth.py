"""How a node's intake knows a transaction comes from a gateway of its pool (and may therefore
carry recipients outside the pool's domains): SMTP AUTH with the private mechanism XMAILMUX.

The node sends a random challenge; the gateway answers HMAC-SHA256(pool secret, context +
challenge). The secret never crosses the wire and an answer is worth one connection only. Anyone
else on the intake port is a stranger: mail for outside domains gets 550 5.7.1 (no open relay).
"""

from __future__ import annotations

import hashlib
import hmac
import os

MECHANISM = "XMAILMUX"
_CONTEXT = b"mailmux-outbound-handoff\0"
CHALLENGE_BYTES = 32


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_BYTES).hex().encode()


def answer(secret: bytes, challenge: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + challenge, hashlib.sha256).hexdigest().encode()


def verify(secret: bytes, challenge: bytes, response: bytes) -> bool:
    return hmac.compare_digest(answer(secret, challenge), response.strip())
