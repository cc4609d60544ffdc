"""STARTTLS is offered exactly when the node has a certificate."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from mailmux.backend.load import LoadMeter
from mailmux.backend.smtp.server import SmtpIntake
from mailmux.backend.store.interface import MailStore
from tests.backend.smtp.support import ALICE, make_config, stored

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
async def tls_intake(
    tmp_path: Path, store: MailStore, certificate: tuple[Path, Path]
) -> AsyncIterator[SmtpIntake]:
    cert, key = certificate
    config = make_config(tmp_path, tls_cert=cert, tls_key=key)
    server = SmtpIntake(config, store, LoadMeter())
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_starttls_then_delivery(
    tls_intake: SmtpIntake, store: MailStore, certificate: tuple[Path, Path]
) -> None:
    assert tls_intake.smtp_address is not None
    host, port = tls_intake.smtp_address
    context = ssl.create_default_context(cafile=str(certificate[0]))
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=10, start_tls=False)
    async with client:
        await client.ehlo()
        assert "starttls" in client.esmtp_extensions
        await client.starttls(tls_context=context)
        assert "starttls" not in client.esmtp_extensions  # already on
        await client.sendmail("s@example.org", [ALICE], b"Subject: secret\r\n\r\nx\r\n")
    [(_, body)] = await stored(store, ALICE)
    assert b"with ESMTPS id" in body
