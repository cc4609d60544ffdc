"""One client command relayed to the backend, its responses passed back as they arrive.

Commands are relayed one at a time, so the gateway always knows which command is in flight. The
fast path only reads the backend; once the backend sends a continuation (IDLE), the client is read
too, for DONE. A response is forwarded whole, so a failover never leaves half a response with the
client. The exception is a response too large to hold (a FETCH of big bodies): it is passed on
in pieces as it arrives, and if the backend fails in its middle the session ends with BYE.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailmux.gateway.errors import AuthenticationFailed, BackendLost, NoBackend
from mailmux.gateway.literals import non_synchronising
from mailmux.gateway.responses import Response, ResponseTooLarge, Spill
from mailmux.gateway.session.failover import ViewLost, failover
from mailmux.gateway.session.view import MailboxView
from mailmux.protocol.imap.framing import CommandBytes, FramingError

if TYPE_CHECKING:
    from mailmux.gateway.session.client import ClientSession

log = logging.getLogger(__name__)

MAX_FAILOVERS = 3


@dataclass
class Relay:
    """One command in flight: whether responses were already passed to the client."""

    tag: bytes
    raw: bytes
    name: str
    continued: bool = False  # a continuation was forwarded (IDLE is waiting for DONE)
    done_sent: bool = False
    forwarded: int = 0
    final: Response | None = None
    view: MailboxView | None = None  # SELECT/EXAMINE: the view being opened
    partial: bool = False  # part of a large response reached the client: no replay possible


async def relay(session: ClientSession, tag: bytes, raw: bytes, name: str) -> bool:
    """Relay one command, failing over as needed; False when the session is over."""
    current = Relay(tag=tag, raw=non_synchronising(raw), name=name)
    if name in ("SELECT", "EXAMINE"):
        current.view = MailboxView(select=current.raw.split(b" ", 1)[1])
    for attempt in itertools.count():
        try:
            if current.name == "IDLE" and current.done_sent:
                # The client ended IDLE before the old backend answered: nothing to replay.
                await session.send(tag + b" OK IDLE terminated\r\n")
                break
            await exchange(session, current)
            break
        except (BackendLost, OSError, asyncio.IncompleteReadError, ResponseTooLarge) as exc:
            if current.partial:
                return await session.bye(f"backend failed in the middle of a response: {exc}")
            if attempt >= MAX_FAILOVERS:
                return await session.bye(f"backend failed {attempt + 1} times: {exc}")
            try:
                await failover(session, current, exc)
            except (NoBackend, ViewLost, AuthenticationFailed) as lost:
                return await session.bye(str(lost))
    remember(session, current)
    return name != "LOGOUT"


async def exchange(session: ClientSession, current: Relay) -> None:
    backend = session.backend
    assert backend is not None
    spill = _spill(session, current)
    backend.writer.write(current.raw)
    await backend.writer.drain()
    # Fast path: nothing to read from the client until the backend asks for a continuation.
    while not current.continued:
        if await forward(session, current, await session.read_backend(backend, spill)):
            return
    if current.done_sent:
        while not await forward(session, current, await session.read_backend(backend, spill)):
            pass
        return
    reader = asyncio.ensure_future(session.read_backend(backend, spill))
    client: asyncio.Future[CommandBytes | FramingError] | None = None
    try:
        while True:
            waiting: set[asyncio.Future[object]] = {reader}  # type: ignore[arg-type]
            if current.continued and not current.done_sent:
                client = client or asyncio.ensure_future(session.next_client_event())
                waiting.add(client)  # type: ignore[arg-type]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if client is not None and client in done:
                event = client.result()
                client = None
                if isinstance(event, CommandBytes):
                    backend.writer.write(event.raw)  # IDLE's DONE
                    await backend.writer.drain()
                    current.done_sent = True
                continue
            response = reader.result()
            reader = asyncio.ensure_future(session.read_backend(backend, spill))
            if await forward(session, current, response):
                return
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        if client is not None:
            # A command the client pipelined while we waited: keep it for later.
            if client.done() and not client.cancelled() and client.exception() is None:
                result = client.result()
                if isinstance(result, CommandBytes):
                    session.queued.append(result)
            else:
                client.cancel()


def _spill(session: ClientSession, current: Relay) -> Spill:
    """Where the start of a large response goes: straight to the client."""

    async def send(data: bytes) -> None:
        current.partial = True
        await session.send(data)

    return send


async def forward(session: ClientSession, current: Relay, response: Response) -> bool:
    """Pass one response to the client; True when it was the command's tagged answer."""
    if response.streamed:
        # The rest of a large (FETCH) response: never a status, continuation or EXISTS.
        current.forwarded += 1
        await session.send(response.raw)
        return False
    if response.is_continuation:
        if current.continued:
            return False  # the replayed IDLE's "+": the client already has one
        current.continued = True
        session.idling = current.name == "IDLE"
    elif response.raw.startswith(b"* BYE"):
        if current.name == "LOGOUT":
            await session.send(response.raw)
            return False
        raise BackendLost(f"backend said {response.raw[:80]!r}")
    view = current.view or session.view
    if view is not None:
        view.observe(response)
    if response.tagged_as(current.tag):
        session.idling = False
        current.final = response
    current.forwarded += 1
    await session.send(response.raw)
    return current.final is not None


def remember(session: ClientSession, current: Relay) -> None:
    """Session state the gateway must restore after a failover."""
    ok = current.final is not None and current.final.status == b"OK"
    if current.name in ("SELECT", "EXAMINE"):
        session.view = current.view if ok else None  # a failed SELECT leaves nothing selected
    elif not ok:
        return
    elif current.name in ("CLOSE", "UNSELECT"):
        session.view = None
    elif current.name == "ENABLE":
        session.enabled.append(current.raw.split(b" ", 1)[1])  # "ENABLE ...\r\n"
