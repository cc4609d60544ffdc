"""XGATEWAY: a pool gateway proves, before any user logs in, that an IMAP link is its own.

    tag XGATEWAY <key name> <unix time> <nonce, 32 hex> <HMAC, 64 hex>

The HMAC covers "name time nonce" under a key derived from the gateway key for this use only.
A node that knows the key (and has not seen the nonce, and finds the time within `MAX_SKEW`)
answers `tag OK [XGATEWAY]` and counts the link in its gateway budget instead of the slots
strangers compete for (`max_unauthenticated`). The user still logs in with their own password:
the proof only buys a connection slot. The gateway sends it as its first line, without waiting
for the greeting, so that a node whose stranger slots are full can still read it (sans-IO: the
caller supplies the clock, the nonce and the key lookup).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from mailmux.protocol.control.keys import GatewayKey, Keyring

LABEL = b"mailmux gateway imap link v1"
MAX_SKEW = 30.0
NONCE_BYTES = 16
_LINE = re.compile(
    rb"([A-Za-z0-9.]{1,32}) XGATEWAY ([A-Za-z0-9][A-Za-z0-9._-]{0,63}) (\d{1,12}(?:\.\d{1,6})?) "
    rb"([0-9a-f]{32}) ([0-9a-f]{64})\r?\n?", re.IGNORECASE)


@dataclass(frozen=True)
class LinkProof:
    tag: str
    name: str
    timestamp: float
    nonce: str
    mac: str


def _mac(key: GatewayKey, timestamp: str, nonce: str) -> str:
    text = f"{key.name} {timestamp} {nonce}".encode()
    return hmac.new(key.derive(LABEL), text, hashlib.sha256).hexdigest()


def command(tag: bytes, key: GatewayKey, now: float, nonce: bytes) -> bytes:
    timestamp = f"{now:.3f}"
    return b"%s XGATEWAY %s %s %s %s\r\n" % (
        tag, key.name.encode(), timestamp.encode(), nonce.hex().encode(),
        _mac(key, timestamp, nonce.hex()).encode())


def parse(line: bytes) -> LinkProof | None:
    """The proof if `line` is an XGATEWAY command, else None (then it is some other command)."""
    match = _LINE.fullmatch(line)
    if match is None:
        return None
    tag, name, timestamp, nonce, mac = (g.decode("ascii") for g in match.groups())
    return LinkProof(tag, name, float(timestamp), nonce.lower(), mac.lower())


def raw_timestamp(line: bytes) -> str:
    match = _LINE.fullmatch(line)
    return match.group(3).decode("ascii") if match else ""


def verify(line: bytes, keyring: Keyring, now: float) -> LinkProof | None:
    """The proof if it is signed by a live gateway key and fresh; the caller checks the nonce."""
    proof = parse(line)
    if proof is None or abs(now - proof.timestamp) > MAX_SKEW:
        return None
    key = keyring.gateway_key(proof.name)
    if key is None:
        return None
    expected = _mac(key, raw_timestamp(line), proof.nonce)
    return proof if hmac.compare_digest(expected, proof.mac) else None
