"""The gateway's fast lane (small commands relayed from protocol callbacks) keeps every contract
of the command loop: failover of a command in flight, the client's exact view.

Real nodes, real signals, a raw-socket client; the gateway's debug log says when the lane handed
a command to the loop, so a test knows the lane, not the loop, took it. The sans-IO rules
(which commands, which response lines) are tested without sockets at the end.
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailmux.gateway.app import Gateway
from mailmux.gateway.config import load
from mailmux.gateway.session import fastlane
from mailmux.gateway.session.client import ClientSession
from mailmux.gateway.session.lanerules import (
    Classifier,
    fast_command,
    literal_size,
    needs_the_loop,
    plain_fetch,
    tag_and_name,
)
from tests.gateway.conftest import ALICE
from tests.gateway.rawimap import RawImap
from tests.gateway.replicated import Pool, inbox, replicated, wait_for  # noqa: F401
from tests.gateway.test_failover import gateway_with, message, serving
from tests.gateway.test_view import _append
from tests.support.gateway import GatewayProcess, write_gateway_config
from tests.support.nodes import NodeProcess, split_address

pytestmark = pytest.mark.timeout(300)

_FETCH = re.compile(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\)\)\r\n")


@pytest.fixture
def pool(replicated: Callable[..., Pool]) -> Pool:  # noqa: F811
    return replicated("abc")


def _selected(pool: Pool, gateway_factory: Callable[..., GatewayProcess],
              raw: Callable[[tuple[str, int]], RawImap], count: int
              ) -> tuple[GatewayProcess, RawImap, list[int | None]]:
    """A gateway over the pool, a client that appended `count` messages and selected INBOX."""
    gw = gateway_with(gateway_factory, list(pool.nodes.values()), extra="catchup_timeout = 30")
    client = raw(gw.imap)
    client.login(*ALICE)
    uids: list[int | None] = [_append(client, "a", message(f"m{i}"))
                              for i in range(1, count + 1)]
    assert b"* %d EXISTS\r\n" % count in client.command("s", "SELECT INBOX")
    return gw, client, uids


def test_a_fast_lane_command_on_a_stopped_node_is_answered_once_by_another(
    pool: Pool, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    nodes = pool.nodes
    gw, client, uids = _selected(pool, gateway_factory, raw, 3)
    warm = client.command("w", "UID FETCH 1:* (FLAGS)")
    assert warm[-1] == b"w OK FETCH completed\r\n", warm
    stopped = serving(gw, ALICE[0], nodes)
    stopped.signal(signal.SIGSTOP)
    # By sequence number: the replay on the next node must name the same messages.
    answer = client.command("f", "FETCH 1:* (UID FLAGS)")
    assert answer[-1] == b"f OK FETCH completed\r\n", answer
    fetched = [_FETCH.fullmatch(r) for r in answer[:-1]]
    assert all(fetched), answer
    assert [(int(m.group(1)), int(m.group(2))) for m in fetched if m] == [
        (1, uids[0]), (2, uids[1]), (3, uids[2])], answer
    log = gw.log()
    assert "hung" in log
    assert re.search(r"the fast lane hands b'f' to the command loop: the node link is lost",
                     log), log[-3000:]
    assert "failing over" in log
    # and the lane carries on from the new node
    again = client.command("g", f"UID FETCH {uids[1]} (FLAGS)")
    assert again[-1] == b"g OK FETCH completed\r\n", again


def test_a_fast_lane_session_follows_another_sessions_changes_exactly(
    pool: Pool, gateway_factory: Callable[..., GatewayProcess],
    raw: Callable[[tuple[str, int]], RawImap],
) -> None:
    nodes = pool.nodes
    gw, client, uids = _selected(pool, gateway_factory, raw, 5)
    assert client.command("w", "UID FETCH 1:* (FLAGS)")[-1].startswith(b"w OK")
    home = serving(gw, ALICE[0], nodes)
    with imaplib.IMAP4(*home.imap, timeout=60) as other:
        other.login(*ALICE)
        other.select("INBOX")
        assert other.store("2", "+FLAGS", "(\\Flagged)")[0] == "OK"
        assert other.store("4", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert other.expunge()[0] == "OK"
        for i in range(6, 8):
            assert other.append("INBOX", "", None, message(f"m{i}"))[0] == "OK"
    # The client keeps its own map from what it is told, as any client does.
    told = client.command("n", "NOOP")
    assert told[-1] == b"n OK NOOP completed\r\n", told
    for response in told[:-1]:
        if (m := re.fullmatch(rb"\* (\d+) EXPUNGE\r\n", response)) is not None:
            del uids[int(m.group(1)) - 1]
        elif (m := re.fullmatch(rb"\* (\d+) EXISTS\r\n", response)) is not None:
            uids += [None] * (int(m.group(1)) - len(uids))
    assert len(uids) == 6, told
    assert any(re.fullmatch(rb"\* 2 FETCH \(FLAGS \([^)]*\\Flagged[^)]*\)( UID \d+)?\)\r\n", r)
               for r in told), told
    # The EXPUNGE and EXISTS came with the lane's NOOP: the loop took over (an expunge is the
    # loop's to hold back or tell) and learnt the new UIDs before its answer.
    assert "the fast lane hands b'n' to the command loop" in gw.log()
    listed = client.command("u", "FETCH 1:* (UID FLAGS)")  # the lane again
    assert listed[-1] == b"u OK FETCH completed\r\n", listed
    shown = [_FETCH.fullmatch(r) for r in listed[:-1]]
    assert all(shown) and len(shown) == 6, listed
    for m in shown:
        assert m is not None
        seq, uid = int(m.group(1)), int(m.group(2))
        assert uids[seq - 1] in (None, uid), (seq, uid, uids)
        uids[seq - 1] = uid
    # The gateway's own map is as exact: after a failover, the next node tells the client
    # nothing it does not already know, and numbers every message as the client does.
    wait_for(lambda: all(sorted(inbox(n)) == sorted(u for u in uids if u is not None)
                         for n in nodes.values() if n is not home), "the replicas")
    home.kill()
    after = client.command("v", "FETCH 1:* (UID FLAGS)")
    assert after[-1] == b"v OK FETCH completed\r\n", after
    assert not any(b"EXPUNGE" in r or b"EXISTS" in r for r in after), after
    again = [_FETCH.fullmatch(r) for r in after[:-1]]
    assert [(int(m.group(1)), int(m.group(2))) for m in again if m] == [
        (seq, uid) for seq, uid in enumerate(uids, 1)], after
    assert b"\\Flagged" in after[1], after


# the sans-IO rules ------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    (b"a1 NOOP\r\n", (b"a1", "NOOP")),
    (b"a2 UID FETCH 1:* (FLAGS)\r\n", (b"a2", "FETCH")),
    (b"a3 fetch 1 (UID FLAGS RFC822.SIZE)\r\n", (b"a3", "FETCH")),
    (b"a4 FETCH 1 (BODY.PEEK[HEADER])\r\n", (b"a4", "FETCH")),  # literals: held whole
    (b"a5 UID FETCH 1 RFC822\r\n", (b"a5", "FETCH")),
    (b"a7 STORE 1 +FLAGS (\\Seen)\r\n", None),  # replayable: the loop's (replay ids)
    (b"a8 SELECT INBOX\r\n", None),  # the view is made there
    (b"a9 IDLE\r\n", None),
    (b"b1 SEARCH SUBJECT {3}\r\n", None),  # a literal
    (b"b2 NOOP\r\nb3 NOOP\r\n", None),  # pipelined: the loop frames them
    (b"b4 NOOP", None),  # not whole yet
    (b"* NOOP\r\n", None),
    (b"b5 CAPABILITY\r\n", None),  # the gateway's own answer
    (b"b6 COMPRESS DEFLATE\r\n", None),
    (b"b7 LOGOUT\r\n", None),
    (b"b8 STATUS INBOX (MESSAGES)\r\n", (b"b8", "STATUS")),
])
def test_which_commands_the_lane_takes(line: bytes, expected: tuple[bytes, str] | None) -> None:
    assert fast_command(line, 8192) == expected
    found = Classifier(8192)(line)
    assert (found[:2] if found else None) == expected
    if expected is not None:
        assert tag_and_name(line) == expected  # the loop reads the same command


def test_the_classifier_remembers_verdicts_but_not_tags() -> None:
    classify = Classifier(8192)
    assert classify(b"A1 UID FETCH 7 (FLAGS)\r\n") == (b"A1", "FETCH", True)
    assert classify(b"A2 UID FETCH 7 (FLAGS)\r\n") == (b"A2", "FETCH", True)
    assert classify(b"A3 FETCH 7 (FLAGS)\r\n") == (b"A3", "FETCH", False)
    assert classify(b"A4 STORE 7 FLAGS ()\r\n") is None
    assert classify(b"A5 STORE 7 FLAGS ()\r\n") is None
    assert classify(b"a.b UID FETCH 7 (FLAGS)\r\n") == (b"a.b", "FETCH", True)
    assert classify(b"a" * 9000 + b" NOOP\r\n") is None  # over the line limit
    for i in range(2 * Classifier.SIZE):
        classify(b"A%d NOOP %d\r\n" % (i, i))
    assert len(classify.known) <= Classifier.SIZE


def test_response_lines_the_lane_leaves_to_the_loop() -> None:
    assert literal_size(b"* 1 FETCH (BODY[] {5}\r\n") == 5
    assert literal_size(b"* 1 FETCH (BINARY[] ~{12+}\r\n") == 12
    assert literal_size(b"* OK {no literal}\r\n") is None
    assert needs_the_loop(b"+ idling\r\n")
    assert needs_the_loop(b"* BYE shutting down\r\n")
    # an expunge: the loop holds it back while the client has a command by number pipelined
    assert needs_the_loop(b"* 3 EXPUNGE\r\n")
    assert needs_the_loop(b"* VANISHED 41:43\r\n")
    assert not needs_the_loop(b"* 1 FETCH (UID 4 FLAGS (\\Seen))\r\n")
    assert not needs_the_loop(b"a1 OK done\r\n")


def test_plain_fetch_lines() -> None:
    assert plain_fetch(b"* 3 FETCH (UID 9 FLAGS (\\Seen $x))\r\n") == (3, 9, b"\\Seen $x")
    assert plain_fetch(b"* 3 FETCH (FLAGS () UID 9)\r\n") == (3, 9, b"")
    assert plain_fetch(b"* 3 FETCH (FLAGS (\\Deleted))\r\n") == (3, None, b"\\Deleted")
    assert plain_fetch(b"* 3 FETCH (UID 9 FLAGS (\\Seen) MODSEQ (12))\r\n") is None
    assert plain_fetch(b"* 3 FETCH (UID 9 RFC822.SIZE 40)\r\n") is None


# bodies through the lane, a slow client ---------------------------------------------------


async def test_a_slow_client_pauses_the_lane_and_gets_every_body_whole(
    node: NodeProcess, tmp_path: Path,
) -> None:
    body = b"From: bob@example.test\r\nSubject: big\r\n\r\n" + b"z" * 76 + b"\r\n"
    body = body * 1300  # about 100 KiB: held whole, below STREAM_AFTER
    with imaplib.IMAP4(*node.imap) as direct:
        direct.login(*ALICE)
        for _ in range(20):
            assert direct.append("INBOX", None, None, body)[0] == "OK"
    sessions: list[ClientSession] = []
    init = ClientSession.__init__

    def remembered(self: ClientSession, *args: Any) -> None:
        init(self, *args)
        sessions.append(self)

    config_path = tmp_path / "gateway.toml"
    write_gateway_config(config_path, [node.control], extra="hang_timeout = 60.0")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClientSession, "__init__", remembered)
        async with Gateway(load(config_path)) as gateway:
            sock = socket.create_connection(split_address(gateway.ready["imap"]))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                async with asyncio.timeout(120):
                    await reader.readline()
                    writer.write(b'l LOGIN "%s" "%s"\r\ns SELECT INBOX\r\n'
                                 % (ALICE[0].encode(), ALICE[1].encode()))
                    while not (await reader.readline()).startswith(b"s OK"):
                        pass
                    (session,) = sessions
                    lane = session.lane
                    assert lane is not None
                    # Small kernel buffers on both sides: the gateway's transport must hold
                    # what the client has not read yet, and ask the lane to wait.
                    session.writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                    before = dict(fastlane.FIGURES)
                    writer.write(b"f FETCH 1:* (BODY.PEEK[])\r\n")
                    while not lane.node_paused:  # the client reads nothing meanwhile
                        await asyncio.sleep(0.01)  # polling, bounded by the timeout
                    got = []
                    while True:
                        line = await reader.readline()
                        if line.startswith(b"f "):
                            assert line == b"f OK FETCH completed\r\n", line
                            break
                        literal = re.search(rb"\{(\d+)\}\r\n$", line)
                        assert literal, line
                        got.append((line, await reader.readexactly(int(literal.group(1))),
                                    await reader.readline()))
            finally:
                writer.close()
    assert [head for head, _, _ in got] == [
        b"* %d FETCH (BODY[] {%d}\r\n" % (i, len(body)) for i in range(1, 21)]
    assert all(data == body and tail == b")\r\n" for _, data, tail in got)
    assert fastlane.FIGURES["relayed"] == before["relayed"] + 1
    assert fastlane.FIGURES["handed over"] == before["handed over"]
