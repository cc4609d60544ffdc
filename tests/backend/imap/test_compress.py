"""COMPRESS=DEFLATE (RFC 4978) on a real node, and a decompression bomb against it."""

from __future__ import annotations

import zlib

from tests.backend.imap.conftest import ALICE
from tests.support.deflate_client import DeflateClient, rss_kib
from tests.support.nodes import NodeProcess

MESSAGE = b"Subject: squeezed\r\n\r\n" + b"all work and no play " * 2000 + b"\r\n"


def _logged_in(node: NodeProcess) -> DeflateClient:
    client = DeflateClient(node.imap)
    assert b"COMPRESS=DEFLATE" in client.greeting
    assert client.command(b"l", b'LOGIN "%s" "%s"' % (ALICE[0].encode(), ALICE[1].encode())
                          )[-1].startswith(b"l OK")
    return client


def test_a_compressed_session_works_both_ways(node: NodeProcess) -> None:
    client = _logged_in(node)
    try:
        assert client.compress() == b"z OK DEFLATE active\r\n"
        assert client.command(b"a", b"APPEND INBOX {%d}" % len(MESSAGE))[-1].startswith(b"+")
        client.send(MESSAGE + b"\r\n")
        assert client.response().startswith(b"a OK [APPENDUID")
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        before = client.received
        out = client.command(b"f", b"FETCH 1 BODY.PEEK[]")
        assert MESSAGE in out[0] and out[-1].startswith(b"f OK")
        assert client.received - before < len(MESSAGE) // 10  # it did travel compressed
        assert client.command(b"c", b"COMPRESS DEFLATE")[-1].startswith(
            b"c NO [COMPRESSIONACTIVE]")
    finally:
        client.close()


def test_unknown_mechanism_and_before_login(node: NodeProcess) -> None:
    client = DeflateClient(node.imap)
    try:
        assert client.command(b"a", b"COMPRESS DEFLATE")[-1].startswith(b"a BAD")
        client.command(b"l", b'LOGIN "%s" "%s"' % (ALICE[0].encode(), ALICE[1].encode()))
        assert client.command(b"b", b"COMPRESS LZ4")[-1].startswith(b"b BAD")
        assert client.command(b"c", b"NOOP")[-1].startswith(b"c OK")
    finally:
        client.close()


def test_a_decompression_bomb_meets_the_line_cap(node: NodeProcess) -> None:
    """200 MB of one line from 200 KB on the wire: refused as too long, memory stays flat,
    and the session goes on."""
    client = _logged_in(node)
    try:
        client.compress()
        baseline = rss_kib(node.pid)
        squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
        assert client.compressor is not None
        wire = squeeze.compress(b"b1 NOOP ")
        chunk = squeeze.compress(b"a" * 1_000_000)
        wire += chunk
        for _ in range(199):
            wire += squeeze.compress(b"a" * 1_000_000)
        wire += squeeze.compress(b"\r\nb2 NOOP\r\n") + squeeze.flush(zlib.Z_SYNC_FLUSH)
        assert len(wire) < 1_000_000
        client.compressor = squeeze  # the bomb is this stream's next bytes
        client.sock.sendall(wire)
        first = client.response()
        assert first.startswith(b"b1 NO [TOOBIG]") or first.startswith(b"b1 BAD"), first
        assert client.response().startswith(b"b2 OK")
        assert rss_kib(node.pid) - baseline < 64 * 1024
        assert client.command(b"b3", b"NOOP")[-1].startswith(b"b3 OK")
    finally:
        client.close()
