"""MODSEQ belongs to the change (issue 7, invariant 2): a change's MODSEQ is its change record's
hybrid-logical-clock stamp, applied verbatim, so replicas agree and failover never goes back."""

from __future__ import annotations

import re
from collections.abc import Callable

import imapclient
import pytest

from tests.replication.support import ALICE, Pool, deliver, wait_for
from tests.support.nodes import NodeProcess


def _client(node: NodeProcess) -> imapclient.IMAPClient:
    client = imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=30)
    client.login(*ALICE)
    client.enable("CONDSTORE")
    return client


def _state(node: NodeProcess) -> tuple[int, dict[int, tuple[int, tuple[bytes, ...]]]]:
    """(HIGHESTMODSEQ, uid → (MODSEQ, flags)) of alice's INBOX."""
    with _client(node) as client:
        info = client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search("ALL"), ["FLAGS", "MODSEQ"])
        return int(info[b"HIGHESTMODSEQ"]), {
            uid: (int(v[b"MODSEQ"][0]), tuple(sorted(f for f in v[b"FLAGS"] if f != b"\\Recent")))
            for uid, v in fetched.items()}


@pytest.mark.timeout(180)
def test_replicas_agree_on_modseqs_and_changedsince_works_after_failover(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc")
    a, b, c = pool.nodes.values()
    for subject in ("one", "two"):
        assert deliver(a, subject)[0] == 250
    with _client(a) as client:
        client.select_folder("INBOX")
        first, second = sorted(client.search("ALL"))
        client.add_flags([first], [b"\\Answered"])
        client.add_flags([second], [b"\\Flagged"])
        shown = int(client.select_folder("INBOX")[b"HIGHESTMODSEQ"])
    wait_for(lambda: _state(b) == _state(a) and _state(c) == _state(a),
             "identical MODSEQs on every replica")
    assert _state(b)[0] == shown
    a.kill()
    # After failover the client sees no lower HIGHESTMODSEQ, and a change made now is found
    # by CHANGEDSINCE the value it was shown.
    with _client(b) as client:
        assert int(client.select_folder("INBOX")[b"HIGHESTMODSEQ"]) >= shown
        client.add_flags([first], [b"\\Seen"])
        changed = client.fetch(client.search("ALL"), ["FLAGS"], modifiers=[f"CHANGEDSINCE {shown}"])
        assert list(changed) == [first]
        assert int(changed[first][b"MODSEQ"][0]) > shown
    wait_for(lambda: _state(c) == _state(b), "c agrees with b")
    assert re.fullmatch(r"\d+", str(_state(c)[0]))
