"""The signed `X-Mailmux-GUID` stamp (sans-IO).

The gateway names each message it submits with a pool-wide GUID so that a replay after a
failover is stored once. Backends de-duplicate on that GUID, so only a holder of the pool secret
may set it: otherwise any sender could pick a GUID and make a mailbox drop a message that has
not arrived yet. The header value is `<guid>; mac=<hex>` with an HMAC over the GUID under a key
derived from the pool secret with a label of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import re

LABEL = b"mailmux guid v1"
_VALUE = re.compile(r"^([0-9a-f]{16,64}); ?mac=([0-9a-f]{32})$")


def _mac(guid: str, secret: bytes) -> str:
    key = hmac.new(secret, LABEL, hashlib.sha256).digest()
    return hmac.new(key, guid.encode(), hashlib.sha256).hexdigest()[:32]


def sign(guid: str, secret: bytes) -> str:
    guid = guid.lower()
    return f"{guid}; mac={_mac(guid, secret)}"


def verify(value: str, secret: bytes) -> str | None:
    """The GUID if the stamp is well-formed and signed with this pool's secret, else None."""
    match = _VALUE.match(value.strip().lower())
    if match is None:
        return None
    guid, mac = match.groups()
    return guid if hmac.compare_digest(mac, _mac(guid, secret)) else None
