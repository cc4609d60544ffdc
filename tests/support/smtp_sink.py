"""A remote mail server for outbound tests: aiosmtpd on 127.0.0.1:0 in its own thread and loop.

It records every message it accepts, can answer chosen recipients with scripted replies (one per
RCPT, then 250), and can stall RCPT answers (the "remote is slow" case) until released.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    at: float


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    scripted: dict[str, list[str]] = field(default_factory=dict)
    stall_rcpt: bool = False
    rcpts_seen: int = 0
    stalled: int = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        self.rcpts_seen += 1
        while self.stall_rcpt:
            self.stalled += 1
            await asyncio.sleep(0.05)  # holding the client, not synchronising the test
        script = self.scripted.get(address)
        if script:
            reply = script.pop(0)
            if not reply.startswith("250"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                      bytes(envelope.original_content or b""), time.time()))
        return "250 2.0.0 Ok: accepted"


class SmtpSink:
    def __init__(self, tls_context: ssl.SSLContext | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.tls_context = tls_context
        self.auth = auth  # (user, password) the sink requires, over TLS
        self.handler = SinkHandler()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        self.port = future.result(timeout=10)
        return self

    async def _start(self) -> int:
        self._server = await self.loop.create_server(
            lambda: SMTP(self.handler, hostname="sink.remote.test", enable_SMTPUTF8=True,
                         tls_context=self.tls_context, authenticator=self._authenticate,
                         auth_required=self.auth is not None),
            "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def __exit__(self, *exc: Any) -> None:
        self.handler.stall_rcpt = False

        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      data: Any) -> AuthResult:
        ok = (self.auth is not None and isinstance(data, LoginPassword)
              and (data.login.decode(), data.password.decode()) == self.auth)
        return AuthResult(success=ok)

    @property
    def messages(self) -> list[Received]:
        return list(self.handler.messages)

    def wait_for(self, count: int, deadline: float = 30.0) -> list[Received]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if len(self.handler.messages) >= count:
                return self.messages
            time.sleep(0.05)  # polling with a deadline
        raise AssertionError(f"sink got {len(self.handler.messages)} of {count} messages")
