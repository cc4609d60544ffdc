"""Reading a COMPRESS=DEFLATE (RFC 4978) stream, shared by the node's IMAP server and the
gateway's client side: the sans-IO `Inflater` gives out at most one bounded piece at a time, so
a decompression bomb meets the command framer's caps piece by piece."""

from __future__ import annotations

import asyncio

from mailmux.protocol.imap.compress import Inflater


async def read_inflated(reader: asyncio.StreamReader, inflater: Inflater, size: int) -> bytes:
    """The next decompressed piece, or b"" at end of stream. Raises CompressError on a broken
    stream. Takes nothing from the socket if cancelled while waiting."""
    while True:
        if inflater.pending:
            piece = inflater.read()
            if piece:
                return piece
        data = await reader.read(size)
        if not data:
            return b""
        inflater.feed(data)
