"""Logging in to a backend node, trying candidates in order (patent S17-S23, §0031).

`connect` walks the ordered candidates: a connection failure or timeout marks the node failed
(twice → quarantined by the pool) and moves on to the next; a refusal of the credentials is final
and answered as such at once, so a wrong password costs one backend login, never one per node
(no brute-force amplification). When nobody is left the caller answers "unavailable" and the log
says why.

The login exchange is plain line-based IMAP: the greeting and the tagged LOGIN answer are single
lines. Credentials go as LITERAL+ literals, so any byte a password may hold survives, and the
backend never has to send a continuation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailmux.gateway.errors import AuthenticationFailed, BackendLost, NoBackend, UnknownUser
from mailmux.gateway.pool import Pool
from mailmux.gateway.selection import Candidate, order
from mailmux.protocol.control.keys import GatewayKey
from mailmux.protocol.imap import gatewaylink

log = logging.getLogger(__name__)

MAX_ROUNDS = 2  # a node that fails in both rounds has failed twice and is quarantined
LOGIN_TAG = b"gw1"
LINK_TAG = b"gw0"
_CAPABILITY = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
READ_LIMIT = 1024 * 1024
WRITE_CHUNK = 256 * 1024


def _nothing() -> None:
    pass


@dataclass
class BackendSession:
    candidate: Candidate
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    capabilities: frozenset[str] = field(default_factory=frozenset)
    lost: str | None = None  # why the gateway gave up on this connection (a hang, say)

    @property
    def node_id(self) -> str:
        return self.candidate.node_id

    def abort(self, reason: str) -> None:
        """Drop the connection at once: every read or write on it fails with BackendLost."""
        self.lost = reason
        self.writer.transport.abort()

    async def send(self, data: bytes, stall_timeout: float,
                   progress: Callable[[], None] | None = None) -> None:
        """Write to the backend; fails when a chunk makes no progress for `stall_timeout`.

        Chunked so a 20 MB APPEND is judged by its progress, not by its length, and so a
        stopped node's full socket buffer is noticed instead of waited on forever.
        """
        try:
            for start in range(0, len(data), WRITE_CHUNK):
                if self.writer.transport.is_closing():
                    # asyncio drops such a write in silence, uvloop raises RuntimeError:
                    # either way the link is gone
                    raise ConnectionResetError("the connection is closed")
                self.writer.write(data[start : start + WRITE_CHUNK])
                if self.writer.transport.get_write_buffer_size():  # else all went out at once
                    async with asyncio.timeout(stall_timeout):
                        await self.writer.drain()
                if progress is not None:
                    progress()  # the node is reading what we send: it is alive
        except TimeoutError as exc:
            raise BackendLost(f"{self.node_id}: a write made no progress in "
                              f"{stall_timeout:.1f}s") from exc
        except OSError as exc:
            raise BackendLost(self.lost or f"{self.node_id}: {exc!r}") from exc
    release: Callable[[], None] = _nothing  # the pool's count of sessions placed on the node

    async def close(self) -> None:
        self.release()
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def login_command(tag: bytes, user: str, password: str) -> bytes:
    u, p = user.encode(), password.encode()
    return b"%s LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (tag, len(u), u, len(p), p)


def _capabilities(line: bytes) -> frozenset[str]:
    match = _CAPABILITY.search(line)
    return frozenset(match.group(1).decode("ascii", "replace").upper().split()) if match else (
        frozenset()
    )


async def login(candidate: Candidate, user: str, password: str, timeout: float,
                key: GatewayKey | None = None) -> BackendSession:
    """One backend, one attempt. Raises AuthenticationFailed or BackendLost.

    With a gateway key, the link is first proven a gateway's (XGATEWAY, sent before the
    greeting arrives): the node then counts it apart from strangers' connections."""
    log.debug("login: trying %s on %s", user, candidate.node_id)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                *candidate.imap, limit=READ_LIMIT
            )
            session = BackendSession(candidate, reader, writer)
            try:
                if key is not None:
                    writer.write(gatewaylink.command(LINK_TAG, key, time.time(),
                                                     os.urandom(gatewaylink.NONCE_BYTES)))
                greeting = await reader.readline()
                if not greeting.startswith(b"* OK"):
                    raise BackendLost(f"greeting {greeting[:80]!r}")
                if writer.transport.is_closing():
                    raise BackendLost("connection closed before LOGIN")
                writer.write(login_command(LOGIN_TAG, user, password))
                await writer.drain()
                capabilities = _capabilities(greeting)
                while True:
                    line = await reader.readline()
                    if not line:
                        raise BackendLost("connection closed during LOGIN")
                    if line.startswith(LOGIN_TAG + b" "):
                        break
                    if line.startswith(LINK_TAG + b" NO"):
                        log.warning("%s does not take our gateway key: %r", candidate.node_id,
                                    line[:120])
                    if line.upper().startswith(b"* CAPABILITY "):
                        capabilities = frozenset(line[13:].decode().upper().split())
            except BaseException:
                await session.close()
                raise
    except TimeoutError as exc:
        raise BackendLost(f"no answer within {timeout:.1f}s") from exc
    except OSError as exc:
        raise BackendLost(str(exc) or type(exc).__name__) from exc
    status = line[len(LOGIN_TAG) + 1 :].split(b" ", 1)[0].upper()
    if status != b"OK":
        await session.close()
        if status == b"NO" and b"[UNAVAILABLE]" not in line.upper():
            raise AuthenticationFailed(f"{candidate.node_id} refused the credentials")
        if status == b"BAD":
            # The backend found the LOGIN itself malformed (a credential over its pre-login
            # limits, say): the client's fault, the same on every node, never a node failure.
            raise AuthenticationFailed(f"{candidate.node_id} rejected the LOGIN: {line[:80]!r}")
        raise BackendLost(f"LOGIN answered {line[:80]!r}")
    session.capabilities = _capabilities(line) or capabilities
    return session


async def connect(
    pool: Pool, user: str, password: str, *, policy: str, timeout: float,
    exclude: Sequence[str] = (), standby: bool = False,
) -> BackendSession:
    """Discover, order, and log in to the first candidate that works."""
    candidates = [c for c in await pool.discover(user, policy) if c.node_id not in exclude]
    if not candidates and not exclude and not standby:
        answers = await pool.ask(user)
        if answers and not any(a.reply.serves for a in answers):
            log.info("login of %s: no pool member knows this user", user)
            raise UnknownUser(f"no pool member serves {user}")
    if not candidates:
        # A standby is a nicety: no second node is not worth a warning.
        log.log(logging.DEBUG if standby else logging.WARNING,
                "login of %s: no live pool member serves this user", user)
        raise NoBackend(f"no live pool member serves {user}")
    reasons: list[str] = []
    # Discovery offers quarantined nodes only when nobody else serves the user: then try them.
    last_resort = all(pool.health.is_quarantined(c.node_id) for c in candidates)
    for _ in range(MAX_ROUNDS):
        for candidate in order(candidates, policy):
            if pool.health.is_quarantined(candidate.node_id) and not last_resort:
                continue
            try:
                session = await login(candidate, user, password, timeout,
                                      pool.config.gateway_key)
            except BackendLost as exc:
                reasons.append(f"{candidate.node_id}: {exc}")
                log.warning("login of %s on %s failed: %s", user, candidate.node_id, exc)
                pool.failed(candidate.node_id, str(exc))
                continue
            pool.succeeded(candidate.node_id)
            if standby:
                log.info("standby for %s ready on %s", user, candidate.node_id)
            else:
                session.release = pool.placed(candidate.node_id)
                log.info("login of %s on %s (load %.1f)", user, candidate.node_id,
                         candidate.load)
            return session
    log.warning("login of %s: every candidate failed (%s)", user, "; ".join(reasons))
    raise NoBackend("; ".join(reasons))
