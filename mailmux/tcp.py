"""TCP socket tuning shared by the IMAP server and the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def quickack(writer: asyncio.StreamWriter) -> None:
    """ACK at once what was just read.

    Clients such as imaplib send a literal and its closing CRLF as two small writes; with Nagle
    on their side and delayed ACKs on ours, every APPEND would stall ~40 ms. Linux resets
    TCP_QUICKACK after use, so callers set it again after every read. Elsewhere: a no-op.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
