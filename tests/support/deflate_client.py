"""A raw IMAP client that can switch to COMPRESS=DEFLATE (RFC 4978), for node and gateway
tests: nothing in the standard library or imapclient speaks it."""

from __future__ import annotations

import re
import socket
import zlib
from pathlib import Path

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class DeflateClient:
    def __init__(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""
        self.compressor: zlib._Compress | None = None
        self.decompressor: zlib._Decompress | None = None
        self.received = 0  # bytes off the wire, compressed or not
        self.greeting = self.line()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        if self.compressor is not None:
            data = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.received += len(data)
        if self.decompressor is not None:
            data = self.decompressor.decompress(data)
        self.buffer += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def response(self) -> bytes:
        parts = [self.line()]
        while (match := _LITERAL.search(parts[-1])) is not None:
            while len(self.buffer) < int(match.group(1)):
                self._fill()
            size = int(match.group(1))
            parts.append(self.buffer[:size])
            self.buffer = self.buffer[size:]
            parts.append(self.line())
        return b"".join(parts)

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        """Responses up to the tagged one, or up to a continuation request."""
        self.send(tag + b" " + text + b"\r\n")
        out = []
        while not (out and out[-1].startswith((tag + b" ", b"+"))):
            out.append(self.response())
        return out

    def compress(self) -> bytes:
        """COMPRESS DEFLATE; both directions are compressed after its tagged OK."""
        answer = self.command(b"z", b"COMPRESS DEFLATE")[-1]
        if answer.startswith(b"z OK"):
            self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.decompressor = zlib.decompressobj(-15)
        return answer


def rss_kib(pid: int) -> int:
    """A process's resident set, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")
