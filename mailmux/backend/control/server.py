"""The node's control endpoint: answers "who serves USER?", load and health queries.

It listens on UDP (the gateway's fast fan-out) and TCP (for networks that drop datagrams) on the
same port. Every message is checked by the codec; anything forged, replayed or malformed is
dropped without an answer, counted in `dropped` by reason and logged with the peer's address, so
a rogue host learns nothing and cannot make the node claim users. Decoding is synchronous and
cheap; only authenticated requests cost a task (bounded by MAX_IN_FLIGHT).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections import Counter
from importlib import metadata

from mailmux.backend.config import BackendConfig
from mailmux.backend.gatewaykeys import GatewayKeys
from mailmux.backend.load import LoadMeter
from mailmux.backend.store.interface import MailStore
from mailmux.protocol.control.codec import (
    NONCE_SIZE,
    ControlDecodeError,
    ControlError,
    Envelope,
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
    is_request,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]

BIND_ATTEMPTS = 5
MAX_IN_FLIGHT = 1024
TCP_IDLE_TIMEOUT = 30.0
MAX_TCP_CONNECTIONS = 256  # every request is one small frame: more would only be an attack
CLOSE_GRACE = 1.0
WARN_INTERVAL = 10.0  # one warning per (peer host, reason) per interval; the rest at DEBUG
MAX_WARNING_KEYS = 4096
BOARD_ADDRESS_PREFIX = "board+"
# What a gateway key may ask; anything else on this port is for holders of the pool secret.
GATEWAY_REQUESTS = (WhoRequest, LoadRequest, HealthRequest)


def _version() -> str:
    try:
        return metadata.version("mailmux")
    except metadata.PackageNotFoundError:
        return "0+unknown"  # running from a checkout that was never installed


class ControlServer:
    def __init__(self, config: BackendConfig, store: MailStore, meter: LoadMeter) -> None:
        self.config = config
        self.store = store
        self.meter = meter
        self.keys = GatewayKeys(config.pool_secret)  # the node gives it the store's keys
        # The node fills this in once the IMAP and SMTP servers know their ports.
        self.endpoints: dict[str, str] = {}
        self.dropped: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.version = _version()
        self._started = time.monotonic()
        self._replay = ReplayCache()
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[object]] = set()
        self._idle_connections: set[asyncio.Task[object]] = set()
        self._last_warning: dict[tuple[str, str], float] = {}

    # lifecycle --------------------------------------------------------------------------

    async def start(self) -> list[Address]:
        host, port = self.config.listen_control
        host = await _numeric_host(host, port)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self._tcp = await asyncio.start_server(self._serve_tcp, host, port)
            bound: Address = self._tcp.sockets[0].getsockname()[:2]
            try:
                self._udp = await self._bind_udp(bound)
            except OSError as exc:
                await self._close_tcp()
                # Only a port the OS picked for TCP may be taken for UDP; try another one.
                if port != 0 or exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS:
                    raise
                log.info("control: UDP port %d taken, retrying (%d)", bound[1], attempt)
                continue
            log.info("control endpoint listening on %s:%d (UDP and TCP)", *bound)
            return [bound]
        raise AssertionError("unreachable: the last attempt raises")

    async def close(self) -> None:
        """Stop listening, give requests in progress CLOSE_GRACE to answer, then cancel."""
        self._closing = True  # new datagrams are ignored from here on
        await self._close_tcp()
        for task in self._idle_connections:
            task.cancel()
        pending = self._tasks | self._connections
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=CLOSE_GRACE)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _bind_udp(self, address: Address) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=address
        )
        return transport

    async def _close_tcp(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    # one message, whatever the transport ----------------------------------------------

    def accept(self, data: bytes, peer: object) -> tuple[Request, Envelope] | None:
        """Decode and authenticate; on refusal count and log it and return None."""
        try:
            message, envelope = decode(
                data, self.keys.keyring, now=time.time(), replay_cache=self._replay
            )
        except ControlError as exc:
            self._drop(exc.reason, peer, str(exc))
            return None
        if not is_request(message):
            self._drop("unexpected", peer, f"{type(message).__name__} is not a request")
            return None
        if envelope.key is not None and not isinstance(message, GATEWAY_REQUESTS):
            self._drop("not-allowed", peer,
                       f"gateway key {envelope.key} may not send {type(message).__name__}")
            return None
        return message, envelope

    def _credential(self, envelope: Envelope) -> Credential | None:
        """Answer with what the request was signed with (None: that key was just revoked)."""
        if envelope.key is None:
            return self.config.pool_secret
        return self.keys.keyring.gateway_key(envelope.key)

    async def respond(self, request: Request, envelope: Envelope) -> bytes | None:
        reply = await self.answer(request)
        credential = self._credential(envelope)
        if credential is None:
            return None
        self.answered[type(request).__name__] += 1
        return encode(
            reply,
            credential,
            now=time.time(),
            nonce=os.urandom(NONCE_SIZE),
            request_id=envelope.request_id,
        )

    async def answer(self, request: Request) -> Reply:
        node_id = self.config.node_id
        if isinstance(request, WhoRequest):
            return WhoReply(
                node_id=node_id,
                user=request.user,
                serves=await self.serves(request.user),
                imap=self.endpoints.get("imap", ""),
                smtp=self.endpoints.get("smtp", ""),
                load=self.meter.score(),
            )
        if isinstance(request, LoadRequest):
            snapshot = self.meter.snapshot()
            users = float(len(await self.store.list_users()))
            return LoadReply(
                node_id=node_id, load=snapshot["score"], details={**snapshot, "users": users}
            )
        assert isinstance(request, HealthRequest)
        return HealthReply(
            node_id=node_id,
            ok=True,
            uptime=time.monotonic() - self._started,
            version=self.version,
        )

    async def serves(self, address: str) -> bool:
        """A registered user, or a board address (board+NAME@DOMAIN) of an existing board."""
        local, _, domain = address.rpartition("@")
        if local.lower().startswith(BOARD_ADDRESS_PREFIX) and domain.lower() in self.config.domains:
            return await self.store.has_board(local[len(BOARD_ADDRESS_PREFIX) :])
        return await self.store.has_user(address)

    def _drop(self, reason: str, peer: object, detail: str) -> None:
        self.dropped[reason] += 1
        host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        now = time.monotonic()
        key = (str(host), reason)
        if now - self._last_warning.get(key, float("-inf")) >= WARN_INTERVAL:
            if len(self._last_warning) >= MAX_WARNING_KEYS:
                self._last_warning.clear()  # spoofed source addresses must not grow memory
            self._last_warning[key] = now
            log.warning("control: dropped message from %s (%s): %s", peer, reason, detail)
        else:
            log.debug("control: dropped message from %s (%s): %s", peer, reason, detail)

    # UDP ------------------------------------------------------------------------------

    def datagram(self, data: bytes, peer: Address) -> None:
        if self._closing:
            return
        accepted = self.accept(data, peer)
        if accepted is None:
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._drop("busy", peer, "too many requests in flight")
            return
        task = asyncio.create_task(self._answer_datagram(*accepted, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_datagram(self, request: Request, envelope: Envelope, peer: Address) -> None:
        try:
            reply = await self.respond(request, envelope)
        except Exception:
            # The store may fail (disk, locked database); the gateway will time out and retry.
            self.dropped["error"] += 1
            log.exception("control: cannot answer %r from %s", request, peer)
            return
        if self._udp is not None and reply is not None:
            self._udp.sendto(reply, peer)

    # TCP ------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            self._drop("busy", peer, "too many TCP connections; closing")
            writer.close()
            return
        task = _current_task()
        self._connections.add(task)
        try:
            await self._tcp_loop(reader, writer, peer)
        except ControlDecodeError as exc:
            self._drop(exc.reason, peer, f"{exc}; closing the connection")
        except (OSError, TimeoutError) as exc:
            log.debug("control: TCP connection from %s ended: %r", peer, exc)
        except Exception:
            self.dropped["error"] += 1
            log.exception("control: TCP connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _tcp_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> None:
        decoder = FrameDecoder()
        while data := await self._read_idle(reader):
            decoder.receive_data(data)
            while (payload := decoder.next_frame()) is not None:
                accepted = self.accept(payload, peer)
                reply = None if accepted is None else await self.respond(*accepted)
                if reply is not None:
                    writer.write(frame(reply))
                    await writer.drain()

    async def _read_idle(self, reader: asyncio.StreamReader) -> bytes:
        """Read while marked idle, so that close() can cancel waiting connections at once."""
        if self._closing:
            return b""
        task = _current_task()
        self._idle_connections.add(task)
        try:
            async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                return await reader.read(64 * 1024)
        finally:
            self._idle_connections.discard(task)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ControlServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.server.datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies to peers that went away: nothing to do.
        log.debug("control: UDP error: %r", exc)


def _current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None, "called outside a task"
    return task


async def _numeric_host(host: str, port: int) -> str:
    """Resolve once, so that TCP and UDP bind the same single address (and port, for port 0)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])
