"""The fast lane: the steady state's small commands relayed from protocol callbacks.

Waking the session's coroutine, its stream reads and its per-command bookkeeping cost several
times what the socket work of a small command does. So while the command loop waits for the
client with nothing unusual going on (`ClientSession.steady`: logged in, no COMPRESS, nothing
queued, no IDLE or NOTIFY, a view without pending expunges, no unread node bytes), the lane
stands in front of both connections' stream protocols (`ClientTap`, `NodeTap`): one whole
command line of a harmless kind (`lanerules.fast_command`) is written to the node straight from
the client's `data_received`; the node's whole responses (one with literals, a FETCH of a
body, is held whole first, as the loop holds it) get the same bookkeeping as `relay.forward`
(the view, the FETCH set a replay filters by, the tagged answer) and leave for the client
together, up to HOLD_MAX, in one write with the tagged answer. No task wakes, no stream is read.
A client that does not keep up pauses reading from the node until its transport drains.

Anything else is the command loop's, at exactly the point where it shows up (`hand_over`): a
continuation, BYE, a tagged answer that needs `learn_uids` first, a response over STREAM_AFTER
or an overlong line (the loop passes those on in pieces), a lost or silent link (the watchdog
covers lane commands as it covers the loop's).
The bytes not yet consumed go to the node's stream reader, the command's line (and whatever the
client sent after it) to the client's, and the command's `Relay` — marked as already on the
wire, holding what was relayed — to the session: the loop frames the line again, adopts that
Relay instead of sending the command, and goes on as if it had sent it itself, failover and
replay included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from mailmux import metrics
from mailmux.gateway.responses import STREAM_AFTER, Response
from mailmux.gateway.session.lanerules import (
    Classifier,
    literal_size,
    needs_the_loop,
    plain_fetch,
)
from mailmux.gateway.session.relay import Relay, prepare

if TYPE_CHECKING:
    from mailmux.gateway.connector import BackendSession
    from mailmux.gateway.session.client import ClientSession
    from mailmux.gateway.session.view import MailboxView

HOLD_MAX = 32 * 1024  # responses kept to leave together with the tagged answer (one write)
LINE_MAX = 64 * 1024  # a longer response line is left to the loop, which reads it in pieces
PIPELINE_MAX = 64 * 1024  # client bytes held while a command is in flight; then reading pauses

log = logging.getLogger(__name__)

# Per process, plain ints (a counter's lock per command would cost more than the relay's own
# work), read by Prometheus at scrape time.
FIGURES = {"relayed": 0, "handed over": 0}
metrics.register_source(
    "mailmux_gateway_fast_lane_commands", "Commands the gateway's fast lane relayed whole "
    "(relayed) or began and handed to the session's command loop (handed over)", ["outcome"],
    "fastlane", lambda: {(outcome,): float(n) for outcome, n in FIGURES.items()},
    kind="counter")


def buffered(reader: asyncio.StreamReader) -> int:
    """Bytes a stream reader holds unread (asyncio's StreamReader, on either event loop)."""
    buffer = getattr(reader, "_buffer", None)
    return 1 if buffer is None else len(buffer)


class FastLane:
    def __init__(self, session: ClientSession, transport: asyncio.Transport,
                 inner: asyncio.Protocol) -> None:
        self.session = session
        self.classify = Classifier(session.config.max_line_length)
        self.timeout = session.config.request_timeout  # no IDLE in the lane: always this
        self.client_transport = transport
        self.client_inner = inner
        self.backend: BackendSession | None = None
        self.node_transport: asyncio.Transport | None = None
        self.node_inner: asyncio.Protocol | None = None
        self.node_open = False  # no end of stream from the node link followed
        self.node_buffer: bytearray | bytes = b"?"  # the node stream reader's unread bytes
        self.open = False  # the loop waits for the client and the session is steady
        self.line = b""  # the command in flight (b"": none)
        self.tag = b""
        self.name = ""
        self.uid = False
        self.after = 0  # len(tag): where a tagged answer's space is
        self.relay: Relay | None = None  # made up front only when it needs the send-time view
        self.started = 0.0
        self.partial = b""  # the node's bytes of a line not yet whole
        self.pipelined = b""  # client bytes that came while a command was in flight
        self.paused = False
        self.out: list[bytes] = []
        self.out_size = 0
        self.parts: list[bytes | memoryview] = []  # the response with literals being read
        self.held = 0  # its size, literals announced included
        self.literal = 0  # octets of a literal still to come
        self.max_literal = session.config.max_message_size
        self.node_paused = False  # the client is slow: reading the node waits
        self.fetched: set[int] = set()
        self.forwarded = 0

    def follow(self, backend: BackendSession) -> None:
        """Stand in front of this node link (the session serves from it from now on)."""
        self.backend = backend
        transport = cast(asyncio.Transport, backend.writer.transport)
        inner = transport.get_protocol()
        if isinstance(inner, NodeTap):
            inner = inner.inner
        assert isinstance(inner, asyncio.Protocol)
        self.node_transport, self.node_inner = transport, inner
        self.node_open = True
        # The reader's buffer, looked at before every command (bytes the node said between
        # commands are the loop's to pass on first); asyncio's StreamReader keeps one
        # bytearray for its life. Unknown (another reader): never empty, the lane stays shut.
        self.node_buffer = getattr(backend.reader, "_buffer", b"?")
        transport.set_protocol(NodeTap(self, backend, inner))

    # the client's side ------------------------------------------------------------------

    def take(self, data: bytes) -> None:
        """Client bytes while the loop waits: a fast command, or the loop's to handle."""
        found = self.classify(data)
        session, backend, node = self.session, self.backend, self.node_transport
        # The node link must be usable and fully read (unsolicited bytes waiting in its reader
        # are the loop's to pass on first), the client keeping up with what it is sent.
        if (found is None or node is None or backend is None or backend is not session.backend
                or not self.node_open or node.is_closing() or session.adopted is not None
                or self.client_transport.get_write_buffer_size() or self.node_buffer):
            self.to_loop(data)
            return
        self.tag, self.name, self.uid = tag, name, uid = found
        self.after = len(tag)
        self.line = data
        self.relay = None
        if name == "FETCH" and not uid and session.view is not None:
            # a replay by sequence number needs the numbers as they were when it was sent
            self.relay = prepare(session, tag, data, name)
        self.forwarded = 0
        self.started = time.monotonic()
        session.watchdog.waiting(backend, self.timeout, session.watch, None)
        node.write(data)

    def pipeline(self, data: bytes) -> None:
        """Client bytes while a command is in flight: kept for after its answer."""
        self.pipelined += data
        if len(self.pipelined) > PIPELINE_MAX and not self.paused:
            self.paused = True
            self.client_transport.pause_reading()

    def to_loop(self, data: bytes) -> None:
        self.open = False
        self.client_inner.data_received(data)

    # the node's side --------------------------------------------------------------------

    def from_node(self, data: bytes) -> None:
        session = self.session
        session.watchdog.heard()
        if self.partial:
            data, self.partial = self.partial + data, b""
        view = session.view
        tag, after = self.tag, self.after
        pos = 0
        while True:
            if self.literal:  # octets of a literal: taken as they are
                piece = min(self.literal, len(data) - pos)
                if not piece:
                    return
                # a view: the one copy of a body is the join of its response
                self.parts.append(memoryview(data)[pos:pos + piece])
                self.literal -= piece
                pos += piece
                continue
            end = data.find(b"\n", pos) + 1
            if not end:
                break
            line = data[pos:end]
            if line.endswith(b"}\r\n") and (size := literal_size(line)) is not None:
                if not self.parts and (needs_the_loop(line) or line.startswith(tag)):
                    self.hand_over(data[pos:], "a continuation, BYE or tagged literal")
                    return
                # A response with literals (a FETCH of a body) is held whole before it goes
                # (failover never leaves half of one with the client); one too large to hold
                # is the loop's, which passes it on in pieces.
                self.held += len(line) + size
                if size > self.max_literal or self.held > STREAM_AFTER:
                    self.hand_over(data[pos:], "a large response")
                    return
                self.parts.append(line)
                self.literal = size
                pos = end
                continue
            pos_before, pos = pos, end
            if self.parts:  # the last line of a response with literals
                self.parts.append(line)
                raw = b"".join(self.parts)
                self.parts.clear()
                self.held = 0
                self._untagged(Response(raw), raw, view)
                continue
            if line.startswith(tag) and line[after:after + 1] == b" ":
                if view is not None:
                    # after NO or BAD too: new mail told meanwhile is still there
                    if len(view.uids) != view.known and view.unknown() and not view.confused:
                        self.hand_over(data[pos_before:], "new messages' UIDs to learn")
                        return
                    if b"[" in line and line[after + 1:after + 4].upper() == b"OK ":
                        # a response code the view may follow (HIGHESTMODSEQ)
                        view.observe(Response(line))
                self.out.append(line)
                self.finish(data[end:])
                return
            if needs_the_loop(line):
                self.hand_over(data[pos_before:], "a continuation, BYE or expunge")
                return
            if self._plain(line, view):
                self.forwarded += 1
                self.out.append(line)
                self.out_size += len(line)
                if self.out_size > HOLD_MAX:
                    self.flush()
            else:
                self._untagged(Response(line), line, view)
        if len(data) - pos > LINE_MAX:
            self.hand_over(data[pos:], "a long line")
            return
        self.partial = data[pos:]

    def _untagged(self, response: Response, raw: bytes, view: MailboxView | None) -> None:
        """What `relay.forward` does with an untagged response, then kept to go out."""
        if self.name == "FETCH" and (fetch := response.fetch) is not None:
            key = fetch.uid if self.uid else fetch.seq
            if key is not None:
                self.fetched.add(key)
        if view is not None:
            view.observe(response)
        self.forwarded += 1
        self.out.append(raw)
        self.out_size += len(raw)
        if self.out_size > HOLD_MAX:
            self.flush()

    def _plain(self, line: bytes, view: MailboxView | None) -> bool:
        """A FETCH of UID and flags the view already holds: nothing to learn from it but its
        key for the replay filter (the general path parses it and observes nothing new)."""
        if view is None or line[:2] != b"* ":
            return False
        found = plain_fetch(line)
        if found is None:
            return False
        seq, uid, flags = found
        if not 0 < seq <= len(view.uids):
            return False
        known = view.uids[seq - 1]
        if known is None or (uid is not None and uid != known) or view.flags.get(known) != flags:
            return False
        if self.name == "FETCH":
            if self.uid:
                if uid is None:
                    return False
                self.fetched.add(uid)
            else:
                self.fetched.add(seq)
        return True

    def flush(self) -> None:
        """Send what is kept, in one write. A client that does not keep up makes its transport
        pause us (`client_full`), which stops reading the node until it drains."""
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_size = 0
        transport = self.client_transport
        if not transport.is_closing():  # else the client is gone: the loop finds out
            transport.write(data)

    def client_full(self) -> None:
        """The client's transport holds more than its high-water mark: read no more from the
        node until it drains. The node is not silent meanwhile, the client is slow: the
        watchdog does not count this time."""
        node = self.node_transport
        if self.line and not self.node_paused and node is not None and not node.is_closing():
            self.node_paused = True
            self.session.watchdog.paused = True
            node.pause_reading()

    def client_drained(self) -> None:
        if self.node_paused:
            self._resume_node()

    def _resume_node(self) -> None:
        self.node_paused = False
        dog = self.session.watchdog
        dog.paused = False
        dog.heard()
        node = self.node_transport
        if node is not None and not node.is_closing():
            node.resume_reading()

    def finish(self, rest: bytes) -> None:
        """The tagged answer came: out it goes with the rest, and the lane is free again."""
        self.flush()
        session = self.session
        session.watchdog.done()
        metrics.observe_command(self.name, time.monotonic() - self.started)
        FIGURES["relayed"] += 1
        self.line = b""
        self.relay = None
        self.fetched.clear()
        if self.node_paused:
            self._resume_node()
        if rest:
            self._to_node_reader(rest)  # said after the answer: read by the loop's next read
        if self.paused or self.pipelined:
            self._release_client()

    def _release_client(self) -> None:
        if self.paused:
            self.paused = False
            self.client_transport.resume_reading()
        if self.pipelined:
            data, self.pipelined = self.pipelined, b""
            if self.open:
                self.take(data)
            else:
                self.client_inner.data_received(data)

    def hand_over(self, rest: bytes, why: str) -> None:
        """The command in flight is the loop's from here on: `rest` is what it has to read."""
        session = self.session
        log.debug("imap %s (%s): the fast lane hands %r to the command loop: %s",
                  session.peer, session.user, self.tag, why)
        if self.parts:  # a response with literals begun: the loop reads it again, whole
            rest = b"".join(self.parts) + rest
            self.parts.clear()
        self.literal = self.held = 0
        if self.node_paused:
            self._resume_node()
        relay = self.relay or prepare(session, self.tag, self.line, self.name)
        relay.fetched, self.fetched = self.fetched, set()
        relay.forwarded = self.forwarded
        relay.on_wire = True
        self.flush()  # whole responses, already observed: they go now
        session.watchdog.done()
        session.adopted = relay
        line, pipelined = self.line, self.pipelined
        self.line = self.pipelined = self.partial = b""
        self.relay = None
        self.open = False
        FIGURES["handed over"] += 1
        if self.paused:
            self.paused = False
            self.client_transport.resume_reading()
        if rest:
            self._to_node_reader(rest)
        self.client_inner.data_received(line + pipelined)

    def hand_over_partial(self, why: str) -> None:
        rest, self.partial = self.partial, b""
        self.hand_over(rest, why)  # after any held start of a response (`hand_over`)

    def _to_node_reader(self, data: bytes) -> None:
        inner = self.node_inner
        assert inner is not None
        inner.data_received(data)

    def drop(self) -> None:
        """The session is over: whatever is in flight is nobody's any more."""
        self.open = False
        self.line = self.pipelined = self.partial = b""
        self.relay = None
        self.out.clear()
        self.parts.clear()
        self.literal = self.held = 0


class ClientTap(asyncio.Protocol):
    """In front of the client stream's protocol: the lane sees the client's bytes first."""

    def __init__(self, lane: FastLane, inner: asyncio.Protocol) -> None:
        self.lane, self.inner = lane, inner

    def data_received(self, data: bytes) -> None:
        lane = self.lane
        if lane.line:
            lane.pipeline(data)
        elif lane.open:
            lane.take(data)
        else:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        # The answer in flight still goes out (as it would from the loop), then the loop
        # reads the end of the connection.
        if self.lane.line:
            self.lane.hand_over_partial("the client closed its side")
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lane.line:
            self.lane.hand_over_partial("the client's connection is lost")
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()
        self.lane.client_full()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
        self.lane.client_drained()


class NodeTap(asyncio.Protocol):
    """In front of a node link's stream protocol: the lane reads answers to its commands."""

    def __init__(self, lane: FastLane, backend: BackendSession, inner: asyncio.Protocol) -> None:
        self.lane, self.backend, self.inner = lane, backend, inner

    def _mine(self) -> bool:
        return bool(self.lane.line) and self.lane.backend is self.backend

    def data_received(self, data: bytes) -> None:
        if self._mine():
            self.lane.from_node(data)
        else:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.lane.backend is self.backend:
            self.lane.node_open = False
        if self._mine():
            self.lane.hand_over_partial("the node closed the link")  # the loop fails over
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lane.backend is self.backend:
            self.lane.node_open = False
        if self._mine():
            self.lane.hand_over_partial(f"the node link is lost ({exc!r})")
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def install(session: ClientSession) -> FastLane | None:
    """A lane in front of the client's connection; None over TLS (left to the loop)."""
    # uvloop's transports are no asyncio.Transport subclasses, but the same interface
    transport = cast(asyncio.Transport, session.writer.transport)
    if session.tls or transport.get_extra_info("sslcontext") is not None:
        return None
    inner = transport.get_protocol()
    if not isinstance(inner, asyncio.Protocol):
        return None
    lane = FastLane(session, transport, inner)
    transport.set_protocol(ClientTap(lane, inner))
    return lane
