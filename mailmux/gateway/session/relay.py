"""One client command relayed to the backend, its responses passed back as they arrive.

Commands are relayed one at a time, so the gateway always knows which command is in flight. The
fast path only reads the backend; once the backend sends a continuation (IDLE), the client is read
too, for DONE. A response is forwarded whole, so a failover never leaves half a response with the
client — except a response too large to hold (a FETCH of big bodies, a huge ENVELOPE line): it
is passed on in pieces as it arrives, and if the backend fails in its middle the session ends
with BYE. Before a command's tagged answer is passed on, the gateway asks the backend for the UIDs
of messages the client was just told of (`learn_uids`), so its sequence↔UID map stays exact.

On a lost backend the command is re-sent after failover (`failover.py`) in the form `replay.py`
gives it: with its replay id, without what was already relayed, by UID if sequence numbers moved.
A FETCH response the client already received is never passed on twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailmux.gateway.errors import AuthenticationFailed, BackendLost, NoBackend, Refused
from mailmux.gateway.literals import non_synchronising
from mailmux.gateway.responses import Response, ResponseTooLarge, Spill, vanished
from mailmux.gateway.session.failover import ViewLost, failover, move_home, tell_gone
from mailmux.gateway.session.replay import (
    NO_EXPUNGE_DURING,
    REPLAYABLE,
    SetCommand,
    parse_set,
    resolve,
    with_replay_id,
)
from mailmux.gateway.session.searchsets import NotTranslatable, by_uid
from mailmux.gateway.session.view import MailboxView, flag_key
from mailmux.protocol.imap.framing import CommandBytes, FramingError

if TYPE_CHECKING:
    from mailmux.gateway.session.client import ClientSession

log = logging.getLogger(__name__)

MAX_FAILOVERS = 3
# A change refused for want of the home role or a majority is made again after a pause that
# doubles each time (0.3, 0.6, 1.2 s: past a lease of 1.4 s, by when a new home holds it).
MAX_REFUSALS = 3
REFUSAL_PAUSE = 0.3
SET_COMMANDS = frozenset({"FETCH", "COPY", "MOVE", "STORE"})
NUMBERED_ANSWERS = frozenset({"SEARCH", "SORT", "THREAD"})  # answers list message numbers
OWN_EXPUNGES = frozenset({"EXPUNGE", "MOVE"})  # their EXPUNGE responses are their answer
# Criteria keys whose argument is a number that is no message number.


@dataclass
class Relay:
    """One command in flight: what was already passed to the client, what a replay needs."""

    tag: bytes
    raw: bytes  # as the client sent it, literals made non-synchronising
    name: str
    uid: bool = False  # the UID form of a command (UID FETCH, UID MOVE, ...)
    continued: bool = False  # a continuation was forwarded (IDLE is waiting for DONE)
    done_sent: bool = False
    forwarded: int = 0
    final: Response | None = None
    view: MailboxView | None = None  # SELECT/EXAMINE: the view being opened
    replay_id: str | None = None
    attempt: int = 0  # 0: first send; n: the n-th replay after failover
    moved: bool = False  # the session moved to the user's home before the first send
    snapshot: list[int | None] | None = None  # the client's seq→UID map when it sent this
    fetched: set[int] = field(default_factory=set)  # FETCH: seqs (UID FETCH: UIDs) relayed
    may_remove: set[int] = field(default_factory=set)  # UIDs this command itself may expunge
    view_changed: bool = False  # failover told the client of expunges: seqs moved
    refusals: int = 0  # times the change was refused with NO [UNAVAILABLE] and made again
    partial: bool = False  # part of a large response reached the client: no replay possible
    on_wire: bool = False  # the fast lane sent this attempt: only its answer is left to read

    @property
    def allows_expunge(self) -> bool:
        return self.uid or self.name not in NO_EXPUNGE_DURING


async def relay(session: ClientSession, tag: bytes, raw: bytes, name: str) -> bool:
    """Relay one command, failing over as needed; False when the session is over."""
    current = session.adopt(tag)  # one the fast lane sent and handed over, or None
    if current is None:
        current = prepare(session, tag, raw, name)
    if current.replay_id is not None:  # a change: made on the user's home, if it is elsewhere
        try:
            current.moved = await move_home(session, current)
        except (NoBackend, ViewLost, AuthenticationFailed) as lost:
            return await session.bye(str(lost))
    started: float | None = None
    failed_node = ""
    failovers = 0
    for attempt in itertools.count():
        current.attempt = attempt
        try:
            if current.name == "IDLE" and current.done_sent:
                # The client ended IDLE before the old backend answered: nothing to replay.
                await session.send(tag + b" OK IDLE terminated\r\n")
                break
            await exchange(session, current)
            break
        except Refused as refusal:
            # Refused changes leave no trace (docs/consistency.md): made again on the home,
            # once one holds the lease, they are made once.
            log.info("imap %s (%s): %s refused on %s (%s); trying again", session.peer,
                     session.user, current.name, refusal.node, refusal.reason)
            await asyncio.sleep(REFUSAL_PAUSE * 2 ** current.refusals)  # a lease can move
            current.refusals += 1
            try:
                current.moved = await move_home(session, current) or current.moved
            except (NoBackend, ViewLost, AuthenticationFailed) as lost:
                return await session.bye(str(lost))
        except ViewLost as lost:
            # A command the gateway cannot put in the node's numbering (rare: see wire).
            return await session.bye(str(lost))
        except ResponseTooLarge as exc:
            # Every node holds the same message: failing over would not help, and the node
            # did nothing wrong. The stream is mid-literal, so the session cannot go on.
            return await session.bye(f"{exc} (over max_message_size)")
        except BackendLost as exc:
            if current.partial:
                return await session.bye(f"backend failed in the middle of a response: {exc}")
            if failovers >= MAX_FAILOVERS:
                return await session.bye(f"backend failed {failovers + 1} times: {exc}")
            failovers += 1
            if started is None:
                started = time.monotonic()
                failed_node = session.backend.node_id if session.backend else ""
            try:
                await failover(session, current, exc)
            except (NoBackend, ViewLost, AuthenticationFailed) as lost:
                return await session.bye(str(lost))
    if started is not None:
        session.proxy.pool.metrics.recovered(failed_node, time.monotonic() - started)
    remember(session, current)
    return name != "LOGOUT"


def prepare(session: ClientSession, tag: bytes, raw: bytes, name: str) -> Relay:
    raw = non_synchronising(raw)
    current = Relay(tag=tag, raw=raw, name=name)
    words = raw.split(b" ", 2)
    current.uid = len(words) > 1 and words[1].upper() == b"UID"
    if name in ("SELECT", "EXAMINE"):
        current.view = MailboxView(select=raw.split(b" ", 1)[1])
    if name in REPLAYABLE:
        current.replay_id = session.replay_id()
    view = session.view
    # UID FETCH, STORE and COPY name UIDs, which failover does not move: replayed whole (the
    # response filter drops what was relayed), they need no copy of a 100k-message map.
    by_uid = current.uid and name in ("FETCH", "STORE", "COPY")
    if view is not None and name in SET_COMMANDS | {"EXPUNGE"} and not by_uid:
        current.snapshot = list(view.uids)
        if name == "MOVE":
            current.may_remove = set(SetCommand(raw).targets(current.snapshot) or ())
        elif name == "EXPUNGE":
            deleted = {u for u, f in view.flags.items() if b"\\deleted" in flag_key(f)}
            command = SetCommand(raw)
            if current.uid and command.ok:
                deleted &= set(command.targets(current.snapshot) or ())
            current.may_remove = deleted
    return current


def wire(session: ClientSession, current: Relay) -> bytes | None:
    """The bytes to send for this attempt; None when nothing is left to ask (answer locally)."""
    raw = current.raw
    pending = session.view is not None and bool(session.view.pending) and current.view is None
    if pending:
        current.view_changed = True  # the node's numbers are not the client's: go by UID
        if current.name in NUMBERED_ANSWERS and not current.uid:
            raw = _criteria_by_uid(current, session.view)
    if ((current.attempt > 0 or current.moved or pending) and current.snapshot is not None
            and current.name in SET_COMMANDS):
        command = SetCommand(raw)
        if command.ok:
            raw = _rewritten(current, command, session.view) or b""
            if not raw:
                return None
    backend = session.backend
    if current.replay_id is not None and backend is not None and "XREPLAY" in (
        backend.capabilities
    ):
        raw = with_replay_id(raw, current.replay_id)
    return raw


def _criteria_by_uid(current: Relay, view: MailboxView | None) -> bytes:
    """A SEARCH/SORT/THREAD by message number with its sets in UIDs (`searchsets.py`), for a
    node that numbers messages without the ones still pending for the client."""
    assert view is not None
    uids = view.uids

    def uids_of(text: bytes) -> list[int]:
        numbers = parse_set(text)
        if numbers is None:
            raise ViewLost(f"{current.name}: a message set the gateway cannot read")
        named = [uids[s - 1] for s in resolve(numbers, range(1, len(uids) + 1), len(uids))]
        if None in named:
            raise ViewLost(f"{current.name} names messages whose UIDs the gateway lacks")
        return [u for u in named if u is not None and u not in view.pending]

    try:
        return by_uid(current.raw, current.name, uids_of)
    except NotTranslatable as exc:
        raise ViewLost(f"{current.name} by message number while the client still counts "
                       f"messages expunged meanwhile: {exc}") from None


def _rewritten(current: Relay, command: SetCommand,
               view: MailboxView | None = None) -> bytes | None:
    snapshot = current.snapshot
    assert snapshot is not None and command.numbers is not None
    gone = view.pending if view is not None else set()
    if current.name == "FETCH" and current.fetched:
        if command.uid:
            targets = command.targets(snapshot)
            if targets is None or None in snapshot:
                return current.raw  # not all UIDs known: the response filter drops repeats
            left = [u for u in targets if u not in current.fetched]
        else:
            seqs = resolve(command.numbers, range(1, len(snapshot) + 1), len(snapshot))
            left = [s for s in seqs if s not in current.fetched]
            if gone and left:
                uids = [u for s in left if (u := snapshot[s - 1]) is not None and u not in gone]
                return command.with_set(uids, uid=True) if uids else None
        return command.with_set(left) if left else None
    if current.view_changed and not command.uid:
        targets = command.targets(snapshot)
        if targets is None and current.attempt == 0 and not current.moved and view is not None \
                and view.uids[:len(snapshot)] == snapshot:
            # Some UIDs are unknown, but nothing was told since the command left the client:
            # only expunges held back stand between its numbers and the node's.
            seqs = resolve(command.numbers, range(1, len(snapshot) + 1), len(snapshot))
            node = [n for s in seqs if (n := view.to_node(s)) is not None]
            return command.with_set(node, uid=False) if node else None
        if not targets:
            raise ViewLost("a command by sequence number cannot be translated after expunges")
        # gone on the node, or a placeholder for one: nothing to do
        targets = [u for u in targets if u > 0 and u not in gone]
        return command.with_set(targets, uid=True) if targets else None
    return current.raw


async def exchange(session: ClientSession, current: Relay) -> None:
    backend = session.backend
    assert backend is not None
    spill = _spill(session, current)
    if current.on_wire:
        current.on_wire = False  # a replay after failover is sent here again
    else:
        data = wire(session, current)
        if data is None:
            # Everything the command asked for was relayed before the node was lost.
            await forward(session, current, Response(
                current.tag + b" OK %s completed\r\n" % current.name.encode()))
            return
        await session.write_backend(backend, data)
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
                    await session.write_backend(backend, event.raw)  # IDLE's DONE
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
        if not current.partial and current.view is None and session.view is not None:
            data = session.view.from_node(data)  # the start of a FETCH: its number
        current.partial = True
        await session.send(data)

    return send


async def forward(session: ClientSession, current: Relay, response: Response) -> bool:
    """Pass one response to the client; True when it was the command's tagged answer."""
    if response.streamed:
        # The rest of a large response: never a status, continuation or EXISTS; its UID and
        # FLAGS go unobserved (a failover during it ends the session anyway).
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
    if view is not None and view.pending and response.raw.startswith(b"* "):
        numbers = current.name.encode() if (current.name in NUMBERED_ANSWERS
                                            and not current.uid) else None
        response = Response(view.from_node(response.raw, numbers))
    if view is not None and current.view is None and _held_back(session, current, view,
                                                                 response):
        return False
    if current.name == "FETCH" and (fetch := response.fetch) is not None:
        key = fetch.uid if current.uid else fetch.seq
        if key is not None:
            if key in current.fetched and current.attempt > 0:
                return False  # relayed before the failover: the client has it
            current.fetched.add(key)
    if response.tagged_as(current.tag):
        if (current.replay_id is not None and current.refusals < MAX_REFUSALS
                and response.status == b"NO" and b"[UNAVAILABLE]" in response.raw[:80]):
            backend = session.backend
            raise Refused(backend.node_id if backend else "?",
                          response.raw.split(b"]", 1)[-1].strip().decode("utf-8", "replace"))
        session.idling = False
        current.final = response
        if view is not None and response.status == b"OK":
            view.observe(response)
        if view is not None and (response.status == b"OK" or view is session.view):
            # Also after NO or BAD: new mail told during a failed command is still there,
            # and a message known only by number is a guess at the next failover.
            await learn_uids(session, view)
        await _tell_pending(session, current)
    elif view is not None:
        view.observe(response)
    current.forwarded += 1
    if current.final is not None or current.continued or not session.hold(response.raw):
        await session.send(response.raw)
    if response.is_continuation and current.name == "IDLE":
        await _tell_pending(session, current)  # IDLE may carry EXPUNGE: no need to wait
    return current.final is not None


def _held_back(session: ClientSession, current: Relay, view: MailboxView,
               response: Response) -> bool:
    """Another session's expunge during a command by number that the gateway sent in UIDs
    (after a failover), or while the client has pipelined a command by number behind this
    one (RFC 3501 7.4.1, 5.5; `pipeline.py`): counted as pending and told later, not now."""
    kind = response.kind[0]
    if kind not in (b"EXPUNGE", b"VANISHED") or current.name in OWN_EXPUNGES:
        return False
    if current.allows_expunge and not session.pipelined_by_number():
        return False
    if kind == b"VANISHED":
        if b"(EARLIER)" in response.raw[:24].upper():
            return False  # an answer the client asked for, not news
        gone = set(vanished(response.raw) or ())
        held = {u for u in view.uids if u is not None and u in gone}
        view.pending |= held
        return bool(held)  # naming none the client counts, it may pass
    n = response.expunge
    if n is None or not 1 <= n <= len(view.uids) or (uid := view.uids[n - 1]) is None:
        return False  # without its UID the gateway could not tell it later: told now
    view.pending.add(uid)
    return True


async def _tell_pending(session: ClientSession, current: Relay) -> None:
    """Messages gone meanwhile that the client still counts are told as soon as a command that
    may carry EXPUNGE is under way (RFC 3501 7.4.1), and no command by number is pipelined
    behind it (5.5)."""
    view = session.view
    if (view is not None and view.pending and current.view is None and current.allows_expunge
            and not session.pipelined_by_number()):
        await tell_gone(session, view, [u for u in view.uids
                                        if u is not None and u in view.pending])


async def learn_uids(session: ClientSession, view: MailboxView) -> None:
    """Ask the backend for the UIDs (and flags) of messages the client knows only by number.

    Runs while the client's command is still in progress (its tagged answer is held), as a
    non-UID FETCH, during which no server may send EXPUNGE: whatever else the backend says meanwhile
    (new mail, flag changes) is passed on to the client, so its view and the backend's stay one.
    """
    unknown = view.unknown()
    backend = session.backend
    if not unknown or view.confused or backend is None:
        return
    low, high = unknown[0], unknown[-1]
    tag = session.internal_tag()
    first, last = view.to_node(low) or low, view.to_node(high) or high
    try:
        items = b"(UID FLAGS MODSEQ)" if view.wants_modseq(session.enabled) else b"(UID FLAGS)"
        await session.write_backend(backend, b"%s FETCH %d:%d %s\r\n" % (tag, first, last, items))
        while True:
            response = await session.read_backend(backend)
            if view.pending and response.raw.startswith(b"* "):
                response = Response(view.from_node(response.raw))
            if response.tagged_as(tag):
                return
            if response.raw.startswith(b"* BYE"):
                raise BackendLost(f"backend said {response.raw[:80]!r}")
            fetch = response.fetch
            if fetch is not None and low <= fetch.seq <= high and fetch.uid is not None:
                if fetch.seq <= view.exists and view.uids[fetch.seq - 1] is None:
                    view.observe(response)  # a UID the client was never shown: kept here
                    continue
                shown = view.flags.get(fetch.uid)
                seen = view.modseqs.get(fetch.uid)
                newer = fetch.modseq is not None and (seen is None or fetch.modseq > seen)
                if fetch.flags is None or (shown is not None and not (newer and seen)
                                           and flag_key(shown) == flag_key(fetch.flags)):
                    continue
                # Flags (or a MODSEQ) the client has not seen yet; with CONDSTORE the MODSEQ
                # goes along (RFC 7162 3.2.4), or the client keeps the old one beside the new
                # flags. A MODSEQ below the one shown is never told: they only grow.
                items = b"FLAGS (%s)" % fetch.flags
                if fetch.modseq is not None and newer:
                    items += b" MODSEQ (%d)" % fetch.modseq
                response = Response(b"* %d FETCH (%s)\r\n" % (fetch.seq, items))
            view.observe(response)
            await session.send(response.raw)
    except BackendLost as exc:
        # The command itself was answered: its answer goes out; the next command fails over.
        log.warning("imap %s (%s): learning UIDs failed: %s", session.peer, session.user, exc)
        backend.abort(str(exc))


def remember(session: ClientSession, current: Relay) -> None:
    """Session state the gateway must restore after a failover."""
    ok = current.final is not None and current.final.status == b"OK"
    if current.name in ("SELECT", "EXAMINE"):
        session.view = current.view if ok else None  # a failed SELECT leaves nothing selected
        if ok:
            session.want_standby()  # a session that works in a mailbox is worth a standby
    elif not ok:
        return
    elif current.name in ("CLOSE", "UNSELECT"):
        session.view = None
    elif current.name == "ENABLE":
        session.enabled.append(current.raw.split(b" ", 1)[1])  # "ENABLE ...\r\n"
    elif current.name == "NOTIFY":
        rest = current.raw.split(b" ", 1)[1]  # "NOTIFY SET ...\r\n" or "NOTIFY NONE\r\n"
        session.notify = None if rest.split(None, 2)[1].upper() == b"NONE" else rest
