"""Gateway keys: what a gateway holds instead of the pool secret (sans-IO).

The pool secret stays on the servers: it makes a host a pool member (replication, user and
password records). A gateway runs on a user's machine, so it gets a key of its own, issued on a
node with `mailmux-backend gateway-key add NAME` and replicated to every node (revocation too).
A key only lets its holder ask WHO/LOAD/HEALTH, prove an IMAP link is a pool gateway's and hand
mail to a node's intake; it is worth nothing on the replication port.

Everything signed with a gateway key names the key, so a node looks the secret up by name and a
revoked or unknown name finds nothing. Every use derives a MAC key with a label of its own, so a
MAC made for one purpose never passes for another, nor for anything made with the pool secret.
A key file holds one line, `NAME:SECRET`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_SECRET = 16


class GatewayKeyError(ValueError):
    """A key file or key name that cannot be used."""


@dataclass(frozen=True)
class GatewayKey:
    name: str
    secret: bytes = field(repr=False)

    def derive(self, label: bytes) -> bytes:
        return derive(self.secret, label)

    def line(self) -> str:
        return f"{self.name}:{self.secret.decode()}"


@dataclass(frozen=True)
class Keyring:
    """A node's view of the credentials it accepts: the pool secret and the live gateway keys."""

    pool_secret: bytes = field(repr=False)
    gateway_secret: Callable[[str], bytes | None]

    def gateway_key(self, name: str) -> GatewayKey | None:
        secret = self.gateway_secret(name)
        return None if secret is None else GatewayKey(name, secret)


Credential = bytes | GatewayKey  # what one side signs with: the pool secret or a gateway key


def derive(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, label, hashlib.sha256).digest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise GatewayKeyError(
            f"gateway key name {name!r}: letters, digits, '.', '_', '-', at most 64")
    return name


def parse_key(text: str) -> GatewayKey:
    """A key file's content (`NAME:SECRET`, surrounding whitespace ignored)."""
    name, colon, secret = text.strip().partition(":")
    if not colon:
        raise GatewayKeyError("expected NAME:SECRET")
    check_name(name)
    if len(secret) < MIN_SECRET or any(c.isspace() for c in secret):
        raise GatewayKeyError(f"the secret must be at least {MIN_SECRET} characters, no spaces")
    return GatewayKey(name, secret.encode())
