"""Asking pool members control questions (used by the gateway and `mailmux-gateway status`).

`query` sends one request to one node over UDP or TCP and returns the first reply that carries a
valid MAC, is fresh, answers this request's id and has the expected type; anything else arriving
meanwhile (stray, forged or late datagrams) is ignored. Failure modes are plain exceptions:
TimeoutError (no valid answer in time), OSError (refused, unreachable; on Linux a UDP query to a
closed port fails at once through ICMP), ControlDecodeError (a TCP peer sent an oversized frame).

`fan_out` asks many nodes at once and returns the answers, fastest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, overload

from mailmux.protocol.control.codec import (
    NONCE_SIZE,
    ControlDecodeError,
    ControlError,
    FrameDecoder,
    ReplayCache,
    decode,
    encode,
    frame,
)
from mailmux.protocol.control.keys import Credential
from mailmux.protocol.control.messages import (
    HealthReply,
    HealthRequest,
    LoadReply,
    LoadRequest,
    Reply,
    Request,
    WhoReply,
    WhoRequest,
    reply_type,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
Transport = Literal["udp", "tcp"]
_READ_SIZE = 64 * 1024


@overload
async def query(
    address: Address,
    message: WhoRequest,
    secret: Credential,
    *,
    timeout: float,
    transport: Transport = "udp",
) -> WhoReply: ...
@overload
async def query(
    address: Address,
    message: LoadRequest,
    secret: Credential,
    *,
    timeout: float,
    transport: Transport = "udp",
) -> LoadReply: ...
@overload
async def query(
    address: Address,
    message: HealthRequest,
    secret: Credential,
    *,
    timeout: float,
    transport: Transport = "udp",
) -> HealthReply: ...
async def query(
    address: Address,
    message: Request,
    secret: Credential,
    *,
    timeout: float,
    transport: Transport = "udp",
) -> Reply:
    if transport not in ("udp", "tcp"):
        raise ValueError(f"transport must be 'udp' or 'tcp', got {transport!r}")
    request_id = os.urandom(NONCE_SIZE)
    data = encode(message, secret, now=time.time(), nonce=request_id)
    accept = _reply_filter(message, secret, request_id, address)
    send = _query_udp if transport == "udp" else _query_tcp
    async with asyncio.timeout(timeout):
        return await send(address, data, accept)


@overload
async def fan_out(
    addresses: Iterable[Address],
    message: WhoRequest,
    secret: Credential,
    timeout: float,
    transport: Transport = "udp",
) -> list[tuple[Address, WhoReply, float]]: ...
@overload
async def fan_out(
    addresses: Iterable[Address],
    message: LoadRequest,
    secret: Credential,
    timeout: float,
    transport: Transport = "udp",
) -> list[tuple[Address, LoadReply, float]]: ...
@overload
async def fan_out(
    addresses: Iterable[Address],
    message: HealthRequest,
    secret: Credential,
    timeout: float,
    transport: Transport = "udp",
) -> list[tuple[Address, HealthReply, float]]: ...
async def fan_out(
    addresses: Iterable[Address],
    message: Request,
    secret: Credential,
    timeout: float,
    transport: Transport = "udp",
) -> Sequence[tuple[Address, Reply, float]]:
    """Ask every address at once; (address, reply, seconds taken) for each answer, fastest
    first. Nodes that fail or stay silent within `timeout` are left out (logged at DEBUG)."""
    results = await asyncio.gather(
        *(_timed_query(a, message, secret, timeout, transport) for a in addresses)
    )
    answers = [r for r in results if r is not None]
    return sorted(answers, key=lambda answer: answer[2])


async def _timed_query(
    address: Address, message: Request, secret: Credential, timeout: float, transport: Transport
) -> tuple[Address, Reply, float] | None:
    started = time.monotonic()
    try:
        reply = await query(address, message, secret, timeout=timeout, transport=transport)
    except (TimeoutError, OSError, ControlError) as exc:
        log.debug("control: no answer from %s:%d: %r", *address, exc)
        return None
    return address, reply, time.monotonic() - started


def _reply_filter(
    request: Request, secret: Credential, request_id: bytes, address: Address
) -> Callable[[bytes], Reply | None]:
    """A function that turns received bytes into the awaited reply, or None to keep waiting."""
    expected = reply_type(request)
    replay_cache = ReplayCache(max_entries=64)

    def accept(data: bytes) -> Reply | None:
        try:
            reply, envelope = decode(data, secret, now=time.time(), replay_cache=replay_cache)
        except ControlError as exc:
            log.warning("control: ignoring reply from %s:%d: %s", *address, exc)
            return None
        if envelope.request_id != request_id or not isinstance(reply, expected):
            log.debug("control: ignoring unrelated %s from %s:%d", type(reply).__name__, *address)
            return None
        return reply

    return accept


async def _query_udp(
    address: Address, data: bytes, accept: Callable[[bytes], Reply | None]
) -> Reply:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _ReplyWaiter(loop.create_future(), accept), remote_addr=address
    )
    try:
        transport.sendto(data)
        return await protocol.reply
    finally:
        transport.close()


class _ReplyWaiter(asyncio.DatagramProtocol):
    def __init__(
        self, reply: asyncio.Future[Reply], accept: Callable[[bytes], Reply | None]
    ) -> None:
        self.reply = reply
        self.accept = accept

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if not self.reply.done() and (reply := self.accept(data)) is not None:
            self.reply.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionResetError("UDP socket closed"))


async def _query_tcp(
    address: Address, data: bytes, accept: Callable[[bytes], Reply | None]
) -> Reply:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(frame(data))
        await writer.drain()
        return await _read_reply(reader, accept)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_reply(
    reader: asyncio.StreamReader, accept: Callable[[bytes], Reply | None]
) -> Reply:
    decoder = FrameDecoder()
    while chunk := await reader.read(_READ_SIZE):
        decoder.receive_data(chunk)
        while (payload := decoder.next_frame()) is not None:
            if (reply := accept(payload)) is not None:
                return reply
    if decoder.buffered:
        raise ControlDecodeError("connection closed inside a frame")
    raise ConnectionResetError("connection closed before a reply")
