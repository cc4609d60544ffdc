"""COMPRESS=DEFLATE (RFC 4978): the raw deflate streams both ways of a connection (sans-IO).

`Inflater` takes what arrives from the socket and gives back at most `max_output` plaintext
bytes per `read()`; the compressed input not yet expanded waits in zlib's unconsumed tail. A
caller that reads one bounded piece, hands it to its `CommandFramer` and only then reads the
next keeps a decompression bomb (megabytes from a few kilobytes) inside the framer's line,
literal and command caps: the expansion is never held whole. `Deflater` compresses what is
sent and flushes it (Z_SYNC_FLUSH) so that every response leaves at once.
"""

from __future__ import annotations

import zlib

MAX_OUTPUT = 64 * 1024
MAX_INPUT = 1024 * 1024  # compressed bytes held before the caller must read some out
WBITS = -15  # raw deflate, no zlib header (RFC 4978 section 4)


class CompressError(Exception):
    """The peer's compressed stream is corrupt or ended."""


class Inflater:
    def __init__(self, max_output: int = MAX_OUTPUT) -> None:
        self.max_output = max_output
        self._z = zlib.decompressobj(WBITS)
        self._input = b""
        # The last read filled its output: zlib may hold more from input it already took.
        self._full = False

    @property
    def pending(self) -> bool:
        """Output may be waiting: `read()` before reading the socket again."""
        return bool(self._input) or self._full

    def feed(self, data: bytes) -> None:
        if len(self._input) + len(data) > MAX_INPUT:
            raise CompressError("compressed input not being read")  # a caller's bug
        self._input += data

    def read(self) -> bytes:
        """Up to `max_output` plaintext bytes; b"" when all input so far is used up."""
        while self._input or self._full:
            try:
                out = self._z.decompress(self._input, self.max_output)
            except zlib.error as exc:
                raise CompressError(f"corrupt deflate stream: {exc}") from None
            if self._z.eof:
                raise CompressError("the deflate stream ended")
            self._input = self._z.unconsumed_tail
            self._full = len(out) >= self.max_output
            if out:
                return out
        return b""


class Deflater:
    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
