"""DKIM signatures (RFC 6376, dkimpy) for outgoing mail, and key generation for the CLI.

The signing domain is the envelope sender's domain; a message whose domain has no configured key
goes out unsigned. Keys are RSA 2048 (RFC 8301 asks for at least 1024; 2048 fits a DNS TXT record
when split into strings, which `txt_record` does).
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailmux.outbound.config import DkimKey

log = logging.getLogger(__name__)

SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                  b"in-reply-to", b"references", b"mime-version", b"content-type",
                  b"content-transfer-encoding"]


class DkimError(Exception):
    pass


class Signer:
    def __init__(self, keys: dict[str, DkimKey]) -> None:
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        for domain, key in keys.items():
            try:
                self._keys[domain] = (key.selector.encode(), key.key_file.read_bytes())
            except OSError as exc:
                raise DkimError(f"outbound.dkim.{domain}.key_file: cannot read {key.key_file}: "
                                f"{exc.strerror}") from exc

    def sign(self, sender: str, message: bytes) -> bytes:
        domain = sender.rpartition("@")[2].lower()
        key = self._keys.get(domain)
        if key is None:
            return message
        selector, private = key
        present = {line.split(b":", 1)[0].strip().lower()
                   for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if b":" in line}
        headers = [h for h in SIGNED_HEADERS if h in present]
        signature: bytes = dkim.sign(message, selector, domain.encode(), private,
                              canonicalize=(b"relaxed", b"relaxed"), include_headers=headers)
        return signature + message


def generate(domain: str, selector: str, key_path: Path) -> str:
    """Write a new private key (mode 0600) and return the TXT record to publish."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return txt_record(domain, selector, base64.b64encode(public).decode())


def txt_record(domain: str, selector: str, public_b64: str) -> str:
    value = f"v=DKIM1; k=rsa; p={public_b64}"
    chunks = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"
