"""Moving a session to another node (patent S31-S41) before the command in flight is re-sent.

If the backend connection fails, hangs (the heartbeat aborts it) or a response does not start
arriving within `request_timeout`, the gateway logs in to another candidate, restores ENABLE and
the selected mailbox, and the relay re-sends the command; the client sees nothing.

Restoring the selected mailbox keeps the client's view exact:
1. Catch up: the new node must hold every message the client knows of, none the client saw
   expunged, the new messages the client was told of, and (with CONDSTORE) a HIGHESTMODSEQ at
   least the client's. A lagging replica is polled for up to `catchup_timeout`.
2. Reconcile: messages still missing after that were expunged meanwhile (or by the command in
   flight itself, as a MOVE that committed before its node died): the client gets EXPUNGE, where
   RFC 3501 allows one; new messages get EXISTS; changed flags get FETCH FLAGS.
Afterwards the client's sequence numbers mean on the new node what they meant on the old one.
When that cannot be had the session ends with `* BYE [UNAVAILABLE]`: the client is never answered
with a different message than the one it meant.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailmux.gateway.connector import connect, login
from mailmux.gateway.errors import AuthenticationFailed, BackendLost, NoBackend
from mailmux.gateway.responses import Response
from mailmux.gateway.session.states import Input
from mailmux.gateway.session.view import MailboxView, flag_key
from mailmux.protocol.imap.response import format_sequence_set

if TYPE_CHECKING:
    from mailmux.gateway.session.client import ClientSession
    from mailmux.gateway.session.relay import Relay

log = logging.getLogger(__name__)

MAX_RESTORE_ATTEMPTS = 3
CATCHUP_POLL = 0.05  # seconds between looks at a lagging replica


class ViewLost(Exception):
    """After failover the new backend cannot show the client the mailbox it was looking at."""


@dataclass
class Lag:
    reason: str
    hard: bool  # True: serving now would show the client wrong messages


async def failover(session: ClientSession, current: Relay, cause: BaseException) -> None:
    old = session.backend
    assert old is not None and session.user is not None and session.password is not None
    session.transition(Input.BACKEND_LOST)
    node = old.node_id
    log.warning("imap %s (%s): backend %s lost during %s (%s); failing over",
                session.peer, session.user, node, current.name or "command", cause)
    metrics = session.proxy.pool.metrics
    metrics.failover(node)
    if old.lost is None:  # a hang was already reported by the heartbeat
        session.proxy.pool.failed(node, str(cause))
    await session.drop_backend()
    config = session.config
    excluded = [node]
    for _ in range(MAX_RESTORE_ATTEMPTS):
        backend = session.take_standby(excluded)
        if backend is not None:
            log.info("imap %s (%s): taking the standby on %s", session.peer, session.user,
                     backend.node_id)
        else:
            backend = await connect(
                session.proxy.pool, session.user, session.password,
                policy=config.selection, timeout=config.request_timeout, exclude=excluded,
            )
        session.use(backend)
        try:
            await _restore(session, current)
            break
        except BackendLost as exc:
            # The replacement failed too while being restored: try the next one.
            assert session.backend is not None
            lost = session.backend.node_id
            log.warning("imap %s (%s): %s failed during restore: %s",
                        session.peer, session.user, lost, exc)
            if session.backend.lost is None:
                session.proxy.pool.failed(lost, str(exc))
            excluded.append(lost)
            await session.drop_backend()
            session.transition(Input.BACKEND_LOST)
    else:
        raise NoBackend(f"no node could be restored ({', '.join(excluded)} failed)")
    assert session.backend is not None
    if current.view is not None:
        current.view = MailboxView(select=current.view.select)
    if current.replay_id is not None:
        metrics.replay(session.backend.node_id)
    session.transition(Input.RESTORED)
    if session.view is not None:
        session.want_standby()
    log.info("imap %s (%s): now on %s", session.peer, session.user, session.backend.node_id)


async def _restore(session: ClientSession, current: Relay) -> None:
    """Put the session's state (ENABLE, selected mailbox, NOTIFY) on its new backend."""
    for enable in session.enabled:
        await internal(session, enable)
    # A SELECT in flight replaces the selected mailbox: restoring the old one is moot.
    if session.view is not None and current.view is None:
        await restore_view(session, session.view, current)
    if session.notify is not None:
        await internal(session, session.notify)  # its initial STATUS stays here


async def move_home(session: ClientSession, current: Relay) -> bool:
    """Before a change: if the answers name another live node as the user's home, move the
    session there (as a failover does, but nothing failed). A change made where the session is
    would take the lease from the home; with the user's sessions on two nodes, the lease would
    go back and forth at every change. Any trouble on the way leaves the session where it is
    (the node then asks the home to hand over, as before) or, once the old backend is dropped,
    is an ordinary failover."""
    old = session.backend
    if old is None or session.user is None or session.password is None:
        return False
    pool = session.proxy.pool
    home = await pool.home_of(session.user, session.config.selection, old.candidate)
    if home is None:
        return False
    if session.standby is not None and session.standby.node_id == home.node_id:
        backend = session.take_standby([])
    else:
        backend = None
    if backend is None:
        try:
            backend = await login(home, session.user, session.password,
                                  session.config.request_timeout, pool.config.gateway_key)
        except (BackendLost, AuthenticationFailed) as exc:
            log.info("imap %s (%s): staying on %s: the home %s did not take the session: %s",
                     session.peer, session.user, old.node_id, home.node_id, exc)
            if isinstance(exc, BackendLost):
                pool.failed(home.node_id, str(exc))  # twice: left out, not tried at each change
            return False
        backend.release = pool.placed(home.node_id)
    log.info("imap %s (%s): moving from %s to the home %s before %s", session.peer,
             session.user, old.node_id, home.node_id, current.name or "a change")
    session.transition(Input.BACKEND_LOST)
    await session.drop_backend()
    session.use(backend)
    try:
        await _restore(session, current)
    except BackendLost as exc:
        await failover(session, current, exc)
        return True
    if current.view is not None:
        current.view = MailboxView(select=current.view.select)
    session.transition(Input.RESTORED)
    if session.view is not None:
        session.want_standby()
    return True


async def internal(session: ClientSession, command: bytes) -> list[Response]:
    """Run a command of the gateway's own on the backend; its responses stay here."""
    backend = session.backend
    assert backend is not None
    tag = session.internal_tag()
    await session.write_backend(backend, tag + b" " + command)
    responses = []
    while True:
        response = await session.read_backend(backend)
        if response.raw.startswith(b"* BYE"):
            raise BackendLost(f"backend said {response.raw[:80]!r}")
        responses.append(response)
        if response.tagged_as(tag):
            if response.status != b"OK":
                raise ViewLost(f"{command[:40]!r} failed on the new backend: "
                               f"{response.raw[:80]!r}")
            return responses


async def examine(session: ClientSession, view: MailboxView) -> MailboxView:
    """The new node's mailbox as a fresh view: select it, then list every UID and its flags."""
    node = MailboxView(select=view.select)
    for response in await internal(session, view.select):
        node.observe(response)
    if node.exists:
        # With CONDSTORE, MODSEQs too: without them the reconcile tells changed flags alone
        # and the client keeps a MODSEQ from before the change (imaptest: "modseqs differ").
        items = b"(UID FLAGS MODSEQ)" if view.wants_modseq(session.enabled) else b"(UID FLAGS)"
        for response in await internal(session, b"FETCH 1:* %s\r\n" % items):
            node.observe(response)
    return node


def behind(view: MailboxView, node: MailboxView, expected: set[int]) -> Lag | None:
    """Why the new node cannot serve the client's view yet; None when it has caught up."""
    present = {u for u in node.uids if u is not None}
    stale = view.gone & present
    if stale:
        return Lag(f"it still holds {len(stale)} message(s) the client saw expunged", True)
    known = [u for u in view.uids if u is not None]
    newest = max(known, default=0)
    # New mail the client was told of by EXISTS alone. (An unknown message between known
    # ones is older than the UID after it, which the node holds: arrived, maybe expunged.)
    # Soft: waited for, then told gone (`MailboxView.fill_from`). The new node's SELECT held
    # what a majority holds (read barrier), so new mail it still lacks was never acknowledged
    # and is being taken back; and the client never saw its UID, so no UID changes meaning.
    unknown = view.tail_unknown()
    if unknown and sum(1 for u in present if u > newest) < unknown:
        return Lag("it lacks new messages the client was told of", False)
    missing = [u for u in known if u not in present and u not in expected]
    if (view.highestmodseq is not None and node.highestmodseq is not None
            and node.highestmodseq < view.highestmodseq):
        # Behind what the client was shown and without messages it knows: they may well be
        # on their way, not expunged. Telling EXPUNGE now would be a guess the node's later
        # state can contradict (the message back under its old UID), so this lag is hard.
        return Lag(f"HIGHESTMODSEQ {node.highestmodseq} < {view.highestmodseq}"
                   + (f" and {len(missing)} message(s) the client knows missing"
                      if missing else ""), bool(missing))
    older = [u for u, m in view.modseqs.items() if node.modseqs.get(u, m) < m]
    if older:
        return Lag(f"{len(older)} message(s) have a lower MODSEQ than the client was shown",
                   False)
    caught_up_by_modseq = (view.highestmodseq is not None and node.highestmodseq is not None)
    if missing and not caught_up_by_modseq:
        return Lag(f"it lacks {len(missing)} message(s) the client knows of", False)
    return None


async def restore_view(session: ClientSession, view: MailboxView, current: Relay) -> None:
    if view.confused:
        raise ViewLost("the gateway lost track of the client's view")
    assert session.backend is not None
    node_id = session.backend.node_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + session.config.catchup_timeout
    while True:
        node = await examine(session, view)
        if node.uidvalidity != view.uidvalidity:
            raise ViewLost(f"UIDVALIDITY changed ({view.uidvalidity} → {node.uidvalidity})")
        if node.confused or node.unknown():
            # The mailbox changed while it was being listed (replication catching up): look again.
            lag: Lag | None = Lag("its mailbox changed while it was being listed", True)
        else:
            lag = behind(view, node, current.may_remove)
        if lag is None:
            break
        if loop.time() >= deadline:
            if lag.hard:
                raise ViewLost(f"{node_id} has not caught up with the client: {lag.reason}")
            log.info("imap %s (%s): %s still differs after catch-up (%s); reconciling",
                     session.peer, session.user, node_id, lag.reason)
            break
        await asyncio.sleep(CATCHUP_POLL)  # a poll interval: the replica is catching up
    await reconcile(session, view, node, current)


async def reconcile(session: ClientSession, view: MailboxView, node: MailboxView,
                    current: Relay) -> None:
    """Tell the client what differs between its view and the new node, as IMAP allows."""
    present = {u for u in node.uids if u is not None}
    unknown_gone = view.fill_from(sorted(present))
    if unknown_gone and _qresync(session):
        raise ViewLost("messages the client knows only by number are gone on the new node, "
                       "and VANISHED needs their UIDs")
    snapshot = current.snapshot
    if snapshot is not None and None in snapshot and all(
            s is None or s == v for s, v in zip(snapshot, view.uids, strict=False)):
        # The command names messages the client knew only by number: now they have UIDs
        # (or placeholders), and a replay in UIDs can name them.
        current.snapshot = [v if s is None else s
                            for s, v in zip(snapshot, view.uids, strict=False)]
    gone = [u for u in view.uids if u is not None and u > 0 and u not in present]
    gone += unknown_gone
    # RFC 3501 7.4.1 and 5.5: not during a command by number, nor before one pipelined
    if gone and current.allows_expunge and not session.pipelined_by_number():
        await tell_gone(session, view, gone)
    elif gone:
        # No EXPUNGE may be sent now: the client keeps counting them until the next point
        # where one may (relay.py tells them); numbers are translated meanwhile.
        view.pending |= set(gone)
    if gone:
        current.view_changed = True
    live = [i for i, u in enumerate(view.uids) if u not in view.pending]
    if len(node.uids) < len(live):
        raise ViewLost("the new node holds fewer messages than the client's view")
    for k, i in enumerate(live):
        uid = view.uids[i]
        if uid != node.uids[k]:
            raise ViewLost(f"message {i + 1} is UID {node.uids[k]} on the new node, "
                           f"not {uid} (client {view.uids[max(0, i - 4):i + 3]}, node "
                           f"{node.uids[max(0, k - 4):k + 3]}, pending {sorted(view.pending)})")
    if len(node.uids) > len(live):
        extra = len(node.uids) - len(live)
        await _tell(session, view, b"* %d EXISTS\r\n" % (len(view.uids) + extra))
        view.uids[-extra:] = node.uids[len(live):]
    qresync = _qresync(session)
    for i, uid in enumerate(view.uids):
        if uid in view.pending:
            continue
        assert uid is not None
        shown, now = view.flags.get(uid), node.flags.get(uid)
        if now is None:
            continue
        # With CONDSTORE the node reports MODSEQs; the client must learn a message's new one
        # even when its flags read the same (another session's change, undone or redone),
        # and is never told a MODSEQ below the one it has (RFC 7162 3.1.1: they only grow).
        modseq, seen = node.modseqs.get(uid), view.modseqs.get(uid)
        moved = modseq is not None and seen is not None and modseq > seen
        if (shown is not None and flag_key(shown) != flag_key(now)) or moved:
            items = b"FLAGS (%s)" % now
            if qresync:
                items += b" UID %d" % uid  # a QRESYNC client keeps its cache by UID
            if modseq is not None and (seen is None or modseq > seen):
                items += b" MODSEQ (%d)" % modseq
            await _tell(session, view, b"* %d FETCH (%s)\r\n" % (i + 1, items))
        view.flags[uid] = now
    if node.uidnext is not None and (view.uidnext is None or node.uidnext > view.uidnext):
        view.uidnext = node.uidnext
    if node.highestmodseq is not None:
        view.highestmodseq = max(view.highestmodseq or 0, node.highestmodseq)


async def tell_gone(session: ClientSession, view: MailboxView, uids: list[int]) -> None:
    """Tell the client these messages are gone: VANISHED once QRESYNC is enabled (RFC 7162
    3.2.10), else one EXPUNGE each, highest number first."""
    if not uids:
        return
    view.pending -= set(uids)
    if _qresync(session):
        await _tell(session, view, b"* VANISHED %s\r\n" % format_sequence_set(uids).encode())
        return
    seqs = sorted((s for u in uids if (s := view.seq_of(u)) is not None), reverse=True)
    for seq in seqs:
        await _tell(session, view, b"* %d EXPUNGE\r\n" % seq)


def _qresync(session: ClientSession) -> bool:
    return any(b"QRESYNC" in enable.upper().split() for enable in session.enabled)


async def _tell(session: ClientSession, view: MailboxView, raw: bytes) -> None:
    view.observe(Response(raw))
    await session.send(raw)
