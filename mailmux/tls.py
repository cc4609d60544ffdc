"""Server-side TLS contexts, built the same way for every listener (IMAP, SMTP, gateway)."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """None without a certificate: then STARTTLS is neither offered nor advertised."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
