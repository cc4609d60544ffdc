"""Finding 10: board flags are per reader; only moderators set \\Deleted and expunge.

Two replicated nodes; alice and bob read board `news`, carol is made its moderator with the
CLI on node a and moderates through node b. bob's \\Seen, \\Flagged and keywords never show for
alice (on either node); bob's STORE \\Deleted and EXPUNGE get `NO [NOPERM]` and his session
goes on; carol's work, and her expunge removes the post for every reader.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable

import pytest

from tests.security.support import ALICE, BOB, Raw
from tests.support.nodes import NodeProcess
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(300)

CAROL = ("carol@example.test", "carol-pw")
BOARD = b'"Boards/news"'


def _pool(node_factory: Callable[..., NodeProcess]) -> tuple[NodeProcess, NodeProcess]:
    ports = {i: free_port() for i in "ab"}
    nodes = []
    for i in "ab":
        peers = ", ".join(f'"{j}=127.0.0.1:{ports[j]}"' for j in "ab" if j != i)
        nodes.append(node_factory(i, replication=(
            f'[replication]\nlisten = "127.0.0.1:{ports[i]}"\npeers = [{peers}]\n')))
    a, b = nodes
    for user in (ALICE, BOB, CAROL):
        a.add_user(*user)
    assert a.cli("board", "add", "news").returncode == 0
    for n in nodes:
        n.start()
    return a, b


def _poll(condition: Callable[[], bool], what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        time.sleep(0.1)  # polling a condition, with a deadline


def _post(node: NodeProcess) -> bool:
    with smtplib.SMTP(*node.smtp, timeout=60) as smtp:
        try:
            smtp.sendmail("x@example.org", ["board+news@example.test"],
                          b"Subject: post\r\n\r\nhi\r\n")
        except smtplib.SMTPDataError as exc:
            assert exc.smtp_code == 451, exc  # too few copies yet: try again
            return False
    return True


def _reader(node: NodeProcess, user: tuple[str, str]) -> Raw:
    raw = Raw(node.imap)
    raw.login(user)
    return raw


def _flags(raw: Raw) -> dict[int, set[bytes]]:
    """UID → flags of every post, as the reader sees them (re-selecting: a fresh view)."""
    assert raw.command(b"s", b"SELECT " + BOARD)[-1].startswith(b"s OK")
    out = {}
    for line in raw.command(b"f", b"UID FETCH 1:* (FLAGS)"):
        match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", line) or re.search(
            rb"FLAGS \(([^)]*)\) UID (\d+)", line)
        if match and line.startswith(b"* "):
            uid, flags = (match.group(1), match.group(2)) if line.find(b"UID") < line.find(
                b"FLAGS") else (match.group(2), match.group(1))
            out[int(uid)] = set(flags.split()) - {b"\\Recent"}
    return out


def test_board_flags_are_per_reader_and_moderation_is_for_moderators(
    node_factory: Callable[..., NodeProcess],
) -> None:
    a, b = _pool(node_factory)
    _poll(lambda: _post(a), "a post accepted (two copies: once the nodes are linked)")
    bob, alice_b = _reader(a, BOB), _reader(b, ALICE)
    try:
        _poll(lambda: bool(_flags(alice_b)), "the post reaches b")
        uid = min(_flags(bob))
        stored = bob.command(b"t", b"UID STORE %d +FLAGS (\\Seen \\Flagged $Junk private)" % uid)
        assert stored[-1].startswith(b"t OK"), stored
        assert _flags(bob)[uid] == {b"\\Seen", b"\\Flagged", b"$Junk", b"private"}
        with _reader(b, BOB) as bob_b:
            _poll(lambda: _flags(bob_b)[uid] == {b"\\Seen", b"\\Flagged", b"$Junk",
                                                 b"private"}, "bob's own flags reach b")
        assert _flags(alice_b)[uid] == set()  # bob's flags are his alone, on every node
        unseen = alice_b.command(b"u", b"STATUS " + BOARD + b" (UNSEEN)")[0]
        assert b"UNSEEN 1" in unseen
        assert alice_b.command(b"k", b"UID SEARCH FLAGGED")[0].strip() == b"* SEARCH"

        # A reader may not moderate: \Deleted and EXPUNGE are refused, and the session goes on.
        refused = bob.command(b"d", b"UID STORE %d +FLAGS (\\Deleted)" % uid)
        assert refused[-1].startswith(b"d NO [NOPERM]"), refused
        assert bob.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        assert b"\\Deleted" not in _flags(bob)[uid] and uid in _flags(alice_b)

        # A moderator (granted on a, acting on b) may; everyone then sees the post go.
        granted = a.cli("board", "moderator", "add", "news", CAROL[0])
        assert granted.returncode == 0, granted.stderr
        assert CAROL[0] in a.cli("board", "moderator", "list", "news").stdout
        with _reader(b, CAROL) as carol:
            assert carol.command(b"s", b"SELECT " + BOARD)[-1].startswith(b"s OK")
            _poll(lambda: carol.command(b"d", b"UID STORE %d +FLAGS (\\Deleted)" % uid)[-1]
                  .startswith(b"d OK"), "carol's moderation reaches b")
            assert _flags(alice_b)[uid] == {b"\\Deleted"}  # the one shared flag
            _poll(lambda: b"\\Deleted" in _flags(bob)[uid], "the \\Deleted reaches a")
            # A reader's EXPUNGE does not remove what a moderator marked: that is theirs.
            assert bob.command(b"x", b"EXPUNGE")[-1].startswith(b"x NO [NOPERM]")
            assert uid in _flags(bob)
            assert carol.command(b"s", b"SELECT " + BOARD)[-1].startswith(b"s OK")
            assert carol.command(b"x", b"EXPUNGE")[-1].startswith(b"x OK")
        assert uid not in _flags(alice_b)
        _poll(lambda: uid not in _flags(bob), "the expunge reaches a")
        removed = a.cli("board", "moderator", "remove", "news", CAROL[0])
        assert removed.returncode == 0 and CAROL[0] not in a.cli(
            "board", "moderator", "list", "news").stdout
    finally:
        bob.close()
        alice_b.close()
