"""QRESYNC after the node pruned its expunge history (`expunged_max`): a client that was away
since before the pruned part still learns of every expunge, on a real node process."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable

from tests.backend.imap.test_compliance import client
from tests.backend.imap.test_qresync import _code, _mailbox
from tests.support.nodes import NodeProcess


def _entries(node: NodeProcess) -> int:
    db = sqlite3.connect(f"file:{node.data_dir / 'mailmux.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM expunged").fetchone()[0])
    finally:
        db.close()


def test_qresync_from_before_the_pruned_history_reports_every_expunge(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node = node_factory("a", extra="expunged_max = 1\n")
    node.add_user("alice@example.test", "alice-pw")
    node.start()
    with client(node) as one, client(node) as two:
        box = _mailbox(one, 6)
        one.run("ENABLE QRESYNC")
        selected = one.run(f"SELECT {box}")
        uidvalidity, modseq = _code(selected, "UIDVALIDITY"), _code(selected, "HIGHESTMODSEQ")
        uids = [int(re.search(r"UID (\d+)", x).group(1))  # type: ignore[union-attr]
                for x in one.run("FETCH 1:* (UID)")]
        one.run("UNSELECT")
        two.run(f"SELECT {box}")
        for seq in (5, 2):  # two EXPUNGE commands: two MODSEQs in the history
            two.run(f"STORE {seq} +FLAGS (\\Deleted)")
            two.run("EXPUNGE")
    assert _entries(node) == 2
    assert node.stop() == 0
    node.start()  # the pruner's first pass runs at start
    deadline = time.monotonic() + 20
    while _entries(node) > 1:
        assert time.monotonic() < deadline, "the history was not pruned"
        time.sleep(0.1)  # polling with a deadline
    with client(node) as one:
        one.run("ENABLE QRESYNC")
        back = one.run(f"SELECT {box} (QRESYNC ({uidvalidity} {modseq}))")
        assert f"* VANISHED (EARLIER) {uids[1]},{uids[4]}" in back
        assert "* 4 EXISTS" in back
