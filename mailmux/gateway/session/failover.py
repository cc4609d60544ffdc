"""Moving a session to another node (patent S31-S41) and re-sending the command in flight.

If the backend connection fails, or a response does not start arriving within `request_timeout`,
the gateway logs in to another candidate, restores ENABLE and the selected mailbox, checks that
the client's view still holds (same UIDVALIDITY, no message the client knows of is missing), and
the relay re-sends the command; the client sees nothing. When the view cannot be kept the session
ends with `* BYE [UNAVAILABLE]` so the client resynchronises: it is never answered with a
different message than the one it meant.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mailmux import metrics
from mailmux.gateway.connector import connect
from mailmux.gateway.responses import Response
from mailmux.gateway.session.states import Input
from mailmux.gateway.session.view import MailboxView

if TYPE_CHECKING:
    from mailmux.gateway.session.client import ClientSession
    from mailmux.gateway.session.relay import Relay

log = logging.getLogger(__name__)


class ViewLost(Exception):
    """After failover the new backend cannot show the client the mailbox it was looking at."""


async def failover(session: ClientSession, current: Relay, cause: BaseException) -> None:
    old = session.backend
    assert old is not None and session.user is not None and session.password is not None
    session.transition(Input.BACKEND_LOST)
    started = metrics.failover_started()
    node = old.candidate.node_id
    log.warning("imap %s (%s): backend %s lost during %s (%s); failing over",
                session.peer, session.user, node, current.name or "command", cause)
    session.proxy.pool.failed(node, str(cause))
    await old.close()
    session.backend = None
    config = session.config
    session.backend = await connect(
        session.proxy.pool, session.user, session.password,
        policy=config.selection, timeout=config.request_timeout, exclude=[node],
    )
    for enable in session.enabled:
        await internal(session, enable)
    if session.view is not None:
        await restore_view(session, session.view)
    if current.view is not None:
        current.view = MailboxView(select=current.view.select)
    session.transition(Input.RESTORED)
    metrics.failover_recovered(started)
    log.info("imap %s (%s): now on %s", session.peer, session.user,
             session.backend.candidate.node_id)


async def internal(session: ClientSession, command: bytes) -> list[Response]:
    """Run a command of the gateway's own on the backend; its responses stay here."""
    backend = session.backend
    assert backend is not None
    tag = session.internal_tag()
    backend.writer.write(tag + b" " + command)
    await backend.writer.drain()
    responses = []
    while True:
        response = await session.read_backend(backend)
        responses.append(response)
        if response.tagged_as(tag):
            if response.status != b"OK":
                raise ViewLost(f"{command[:40]!r} failed on the new backend: "
                               f"{response.raw[:80]!r}")
            return responses


async def restore_view(session: ClientSession, view: MailboxView) -> None:
    fresh = MailboxView(select=view.select)
    for response in await internal(session, view.select):
        fresh.observe(response)
    if fresh.uidvalidity != view.uidvalidity:
        raise ViewLost(f"UIDVALIDITY changed ({view.uidvalidity} → {fresh.uidvalidity})")
    if fresh.exists < view.exists:
        raise ViewLost(f"the replica lacks messages ({fresh.exists} < {view.exists})")
    if fresh.exists > view.exists:
        await session.send(b"* %d EXISTS\r\n" % fresh.exists)  # new mail: allowed any time
        view.exists = fresh.exists
