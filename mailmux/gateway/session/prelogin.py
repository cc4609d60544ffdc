"""What the gateway answers itself before login: CAPABILITY, ID, NOOP, LOGOUT, STARTTLS, LOGIN and
AUTHENTICATE PLAIN. A login runs discovery, selection and "connect with retry" (`connector.py`).

Kept apart from the relay so limits on unauthenticated clients (timeouts, connection caps) have
one place to live.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from typing import TYPE_CHECKING

from mailmux import metrics
from mailmux.gateway.connector import connect
from mailmux.gateway.errors import AuthenticationFailed, NoBackend, UnknownUser
from mailmux.gateway.guard import peer_host
from mailmux.gateway.session.states import Input
from mailmux.protocol.imap.commands import Authenticate, Command, Login
from mailmux.protocol.imap.framing import CommandBytes

if TYPE_CHECKING:
    from mailmux.gateway.session.client import ClientSession

log = logging.getLogger(__name__)

LOCAL_BEFORE_LOGIN = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "LOGIN", "AUTHENTICATE", "ID"}


async def local(session: ClientSession, command: Command) -> bool:
    """Answer one command the gateway handles itself; False when the session is over."""
    tag = command.tag
    if command.name == "CAPABILITY":
        await session.send(f"* CAPABILITY {session.capabilities()}\r\n{tag} OK CAPABILITY done\r\n"
                           .encode())
    elif command.name == "NOOP":
        if session.backend is not None:
            return await session.relay(tag.encode(), command.raw, "NOOP")
        await session.send(f"{tag} OK NOOP done\r\n".encode())
    elif command.name == "ID":
        await session.send(f'* ID ("name" "mailmux-gateway")\r\n{tag} OK ID done\r\n'.encode())
    elif command.name == "LOGOUT":
        await session.send(f"* BYE mailmux gateway logging out\r\n{tag} OK LOGOUT done\r\n"
                           .encode())
        session.transition(Input.LOGOUT)
        return False
    elif command.name == "STARTTLS":
        await starttls(session, tag)
    elif command.name == "LOGIN":
        assert isinstance(command.args, Login)
        await login(session, tag, command.args.user, command.args.password)
    else:
        assert isinstance(command.args, Authenticate)
        await authenticate(session, tag, command.args)
    return True


async def starttls(session: ClientSession, tag: str) -> None:
    context = session.proxy.tls_context
    if context is None or session.tls or session.backend is not None:
        await session.send(f"{tag} BAD [CLIENTBUG] STARTTLS not available now\r\n".encode())
        return
    await session.send(f"{tag} OK begin TLS negotiation\r\n".encode())
    await session.writer.start_tls(context)
    session.tls = True
    session.framer = session.new_framer()


async def authenticate(session: ClientSession, tag: str, args: Authenticate) -> None:
    if session.backend is not None:
        await session.send(f"{tag} BAD [CLIENTBUG] already authenticated\r\n".encode())
        return
    if args.mechanism != "PLAIN":
        await session.send(f"{tag} NO [CANNOT] only AUTHENTICATE PLAIN is offered\r\n".encode())
        return
    blob = args.initial
    if blob is None:
        await session.send(b"+ \r\n")
        event = await session.next_client_event()
        line = event.raw.strip() if isinstance(event, CommandBytes) else b"*"
        if line == b"*":
            await session.send(f"{tag} BAD authentication cancelled\r\n".encode())
            return
        try:
            blob = base64.b64decode(line, validate=True)
        except binascii.Error:
            await session.send(f"{tag} BAD [CLIENTBUG] invalid base64\r\n".encode())
            return
    parts = blob.split(b"\0")
    if len(parts) != 3:
        await session.send(f"{tag} BAD [CLIENTBUG] malformed PLAIN response\r\n".encode())
        return
    try:
        authzid, user, password = (p.decode() for p in parts)
    except UnicodeDecodeError:
        await session.send(f"{tag} BAD [CLIENTBUG] credentials must be UTF-8\r\n".encode())
        return
    if authzid and authzid.lower() != user.lower():
        # As the nodes do: nobody acts as another user (RFC 4616 authorization identity).
        await session.send(f"{tag} NO [AUTHORIZATIONFAILED] cannot act as another user\r\n"
                           .encode())
        return
    await login(session, tag, user, password)


async def login(session: ClientSession, tag: str, user: str, password: str) -> None:
    if session.backend is not None:
        await session.send(f"{tag} BAD [CLIENTBUG] already authenticated\r\n".encode())
        return
    config = session.config
    penalty = session.proxy.penalty
    address = peer_host(session.peer)
    started = time.monotonic()
    await asyncio.sleep(penalty.penalty(user, address))  # earned by earlier failures
    try:
        backend = await connect(
            session.proxy.pool, user, password,
            policy=config.selection, timeout=config.request_timeout,
        )
    except (AuthenticationFailed, UnknownUser) as exc:
        log.info("imap %s: login of %s refused: %s", session.peer, user, exc)
        await penalty.answer_failure(started, user, address)
        metrics.login("imap", False)
        session.transition(Input.LOGIN_REFUSED)
        await session.send(f"{tag} NO [AUTHENTICATIONFAILED] invalid credentials\r\n".encode())
        return
    except NoBackend as exc:
        log.warning("imap %s: login of %s impossible: %s", session.peer, user, exc)
        session.transition(Input.LOGIN_REFUSED)
        await session.send(f"{tag} NO [UNAVAILABLE] no mail server is available\r\n".encode())
        return
    penalty.succeeded(user, address)
    session.attach(backend, user, password)
    metrics.login("imap", True)
    await session.send(f"{tag} OK [CAPABILITY {session.capabilities()}] logged in\r\n".encode())
