"""Bad input and limits: clean protocol errors, the session or server keeps working."""

from __future__ import annotations

import imaplib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.backend.imap.conftest import ALICE, raw_session
from tests.support.nodes import NodeProcess


def test_garbage_gets_bad_and_the_session_continues(node: NodeProcess) -> None:
    out = raw_session(node, b"\x00\xff garbage\r\n", b"a1 FROB\r\n", b"a2 FETCH 1 (FLAGS)\r\n",
                      b"a3 SELECT\r\n", b'a4 SEARCH CHARSET "X" ALL\r\n', b"a5 NOOP\r\n")
    assert b"* BAD" in out
    assert b"a1 BAD [CLIENTBUG] unknown command FROB" in out
    assert b"a2 BAD [CLIENTBUG] FETCH needs a selected mailbox" in out
    assert b"a3 BAD" in out and b"a4 BAD [BADCHARSET" in out
    assert b"a5 OK" in out


def test_overlong_line_and_oversized_literal(quick_node: NodeProcess) -> None:
    out = raw_session(quick_node, b"t1 NOOP " + b"x" * 5000 + b"\r\n", b"t2 NOOP\r\n",
                      b"t3 APPEND INBOX {200000}\r\n", b"t4 NOOP\r\n")
    assert b"t1 NO [TOOBIG] line too long" in out
    assert b"t2 OK" in out
    assert b"t3 NO [TOOBIG]" in out and b"t4 OK" in out
    with imaplib.IMAP4(*quick_node.imap) as imap:
        imap.login(*ALICE)
        imap.select("INBOX")
        assert imap.search(None, "ALL")[1] == [b""]  # nothing half-stored


def test_non_synchronising_oversized_literal_closes_the_connection(
    quick_node: NodeProcess,
) -> None:
    out = raw_session(quick_node, b"t1 APPEND INBOX {200000+}\r\n" + b"x" * 1000)
    assert b"t1 BAD [TOOBIG]" in out


def test_unauthenticated_sessions_get_small_literals(quick_node: NodeProcess) -> None:
    out = raw_session(quick_node, b"t1 LOGIN {20000}\r\n", user=None)
    assert b"t1 NO [TOOBIG]" in out


def test_failed_logins_are_limited(quick_node: NodeProcess) -> None:
    with socket.create_connection(quick_node.imap, timeout=20) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for tag in (b"f1", b"f2"):
            sock.sendall(tag + b" LOGIN alice@example.test wrong\r\n")
            assert reader.readline().startswith(tag + b" NO [AUTHENTICATIONFAILED]")
        assert reader.readline().startswith(b"* BYE")
        assert reader.readline() == b""  # closed


def test_login_timeout_closes_idle_unauthenticated_connections(quick_node: NodeProcess) -> None:
    with socket.create_connection(quick_node.imap, timeout=20) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"* OK")
        started = time.monotonic()
        assert reader.readline().startswith(b"* BYE")  # the server hangs up, we only wait
        assert time.monotonic() - started < 15


def test_too_many_unauthenticated_connections(quick_node: NodeProcess) -> None:
    held = [socket.create_connection(quick_node.imap, timeout=20) for _ in range(3)]
    try:
        for s in held:
            assert s.makefile("rb").readline().startswith(b"* OK")
        with socket.create_connection(quick_node.imap, timeout=20) as extra:
            assert extra.makefile("rb").readline().startswith(b"* BYE [UNAVAILABLE]")
    finally:
        for s in held:
            s.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_starttls_only_with_a_certificate(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    n = node_factory("tls", extra=(
        f'tls_cert = "{cert}"\ntls_key = "{key}"\nlisten_imaps = "127.0.0.1:0"'))
    n.add_user(*ALICE)
    n.start()
    context = ssl.create_default_context(cafile=str(cert))
    with imaplib.IMAP4(*n.imap) as imap:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(context)
        assert "STARTTLS" not in imap.capabilities
        imap.login(*ALICE)
        assert imap.select("INBOX")[0] == "OK"
    host, _, port = str(n.ready["imaps"]).rpartition(":")
    with imaplib.IMAP4_SSL(host, int(port), ssl_context=context) as imaps:
        assert "STARTTLS" not in imaps.capabilities  # already encrypted
        imaps.login(*ALICE)
        assert imaps.select("INBOX")[0] == "OK"
