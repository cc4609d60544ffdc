"""COMPRESS=DEFLATE (RFC 4978) between a client and the gateway: the gateway still frames,
tracks and relays the plain commands; a decompression bomb meets its caps."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from tests.gateway.conftest import ALICE
from tests.support.deflate_client import DeflateClient, rss_kib
from tests.support.gateway import GatewayProcess
from tests.support.nodes import NodeProcess

MESSAGE = b"Subject: squeezed\r\n\r\n" + b"all work and no play " * 2000 + b"\r\n"


def _logged_in(gw: GatewayProcess) -> DeflateClient:
    client = DeflateClient(gw.imap)
    login = b'LOGIN "%s" "%s"' % (ALICE[0].encode(), ALICE[1].encode())
    assert client.command(b"l", login)[-1].startswith(b"l OK")
    caps = client.command(b"c", b"CAPABILITY")[0]
    assert b"COMPRESS=DEFLATE" in caps and caps.count(b"COMPRESS=") == 1
    return client


def test_compressed_session_through_the_gateway(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    client = _logged_in(gw)
    try:
        assert client.compress() == b"z OK DEFLATE active\r\n"
        assert client.command(b"a", b"APPEND INBOX {%d}" % len(MESSAGE))[-1].startswith(b"+")
        client.send(MESSAGE + b"\r\n")
        assert client.response().startswith(b"a OK [APPENDUID")
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        before = client.received
        out = client.command(b"f", b"FETCH 1 (UID BODY.PEEK[])")
        assert MESSAGE in out[0] and out[-1].startswith(b"f OK")
        assert client.received - before < len(MESSAGE) // 10
        assert client.command(b"c", b"COMPRESS DEFLATE")[-1].startswith(
            b"c NO [COMPRESSIONACTIVE]")
        assert client.command(b"o", b"LOGOUT")[-1].startswith(b"o OK")
    finally:
        client.close()


def test_a_decompression_bomb_meets_the_gateway_line_cap(
    pool3: list[NodeProcess], gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(pool3[:1])
    client = _logged_in(gw)
    try:
        client.compress()
        assert gw.proc is not None
        baseline = rss_kib(gw.proc.pid)
        squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
        wire = squeeze.compress(b"b1 NOOP ")
        for _ in range(200):
            wire += squeeze.compress(b"a" * 1_000_000)
        wire += squeeze.compress(b"\r\nb2 NOOP\r\n") + squeeze.flush(zlib.Z_SYNC_FLUSH)
        client.compressor = squeeze
        client.sock.sendall(wire)
        first = client.response()
        assert first.startswith((b"b1 NO [TOOBIG]", b"b1 BAD")), first
        assert client.response().startswith(b"b2 OK")
        assert rss_kib(gw.proc.pid) - baseline < 64 * 1024
        assert client.command(b"b3", b"NOOP")[-1].startswith(b"b3 OK")
    finally:
        client.close()
