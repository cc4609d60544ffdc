"""The read barrier (issue 7, replication/barrier.py): a sync point on a node that is not the
user's home shows every change acknowledged before it.

Found by the two-gateway imaptest stress under faults: after a failover a user's sessions sit on
different nodes; a change acknowledged by the home and one other node was missing from a CHECK
on the third, and imaptest's checkpoint saw "flags differ", "modseqs differ" and "Mailbox has
only N of M messages" between sessions.
"""

from __future__ import annotations

import imaplib
import threading
from collections.abc import Callable

import pytest

from tests.replication.support import ALICE, Pool, deliver, inbox, wait_for


def _session(address: tuple[str, int]) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(*address, timeout=60)
    imap.login(*ALICE)
    assert imap.select("INBOX")[0] == "OK"
    return imap


@pytest.mark.timeout(180)
def test_noop_on_a_node_that_is_not_the_home_shows_what_the_home_acknowledged(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool("abc", proxied=True, replication_extra='read_barrier = "30s"\n')
    a, b, c = pool.nodes.values()
    assert deliver(a, "one")[0] == 250  # a takes the home lease with this change
    wait_for(lambda: 1 in inbox(b) and 1 in inbox(c), "the message on b and c")
    home, other = _session(a.imap), _session(c.imap)
    # c hears nothing from a or b (their pushes wait in the proxies); c still asks them.
    pool.proxies[("a", "c")].pause()
    pool.proxies[("b", "c")].pause()
    typ, _ = home.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"  # acknowledged: a and b hold it

    answered: list[tuple[str, list[bytes | None]]] = []
    noop = threading.Thread(target=lambda: answered.append(other.noop()))
    noop.start()
    try:
        # Without the barrier c answers at once, without the flag, and never waits.
        wait_for(lambda: "waits for records" in c.log(), "c's NOOP to wait for the records")
    finally:
        pool.proxies[("a", "c")].resume()
        pool.proxies[("b", "c")].resume()
        noop.join(timeout=60)
    assert answered and answered[0][0] == "OK"
    fetched = other.response("FETCH")[1]
    assert any(f is not None and b"\\Flagged" in f for f in fetched), fetched
    home.logout()
    other.logout()
