"""A partition of a 3-node pool, written to on both sides through gateways that each see only
their side, then healed.

Every replication link runs through a TCP proxy the test cuts ({a, b} | {c}), and each gateway
reaches the nodes' control ports through proxies too: gateway 0 sees a and b, gateway 1 sees
only c. Clients append (each message with its own Message-ID) and store flags through both
gateways. Afterwards:
- every replica holds the same (UID, GUID, flags, MODSEQ) rows per mailbox and the same
  HIGHESTMODSEQ (compared in each node's SQLite file);
- no client ever saw one UID name two messages (every FETCH any client made is kept);
- the minority side refused every change (`NO [UNAVAILABLE]`) — with W=2 that is the copies
  rule; with `normal = 1` only the home lease (a majority grants it) can refuse.
"""

from __future__ import annotations

import imaplib
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from tests.imaptest.targets import PASSWORD
from tests.replication.cluster import Cluster, cluster, wait_until

USER = "split@example.test"
Observed = dict[tuple[int, int], set[bytes]]  # (UIDVALIDITY, UID) → Message-IDs seen


def _login(gateway: tuple[str, int]) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(*gateway, timeout=30)
    try:
        imap.login(USER, PASSWORD)
    except BaseException:
        imap.shutdown()
        raise
    return imap


def _append(imap: imaplib.IMAP4, side: str) -> tuple[str, bytes]:
    message_id = f"<{uuid.uuid4().hex}@{side}.split>".encode()
    body = b"Message-ID: " + message_id + b"\r\nSubject: split " + side.encode() + b"\r\n\r\nx\r\n"
    typ, data = imap.append("INBOX", "", imaplib.Time2Internaldate(time.time()), body)
    return typ, data[0] or b""


def _observe(imap: imaplib.IMAP4, seen: Observed) -> None:
    imap.select("INBOX")
    _, status = imap.response("UIDVALIDITY")
    validity = int(status[0]) if status and status[0] else 0
    _, fetched = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    for item in fetched:
        if isinstance(item, tuple):
            uid = int(item[0].split(b"UID ")[1].split()[0])
            header = item[1].strip()
            seen.setdefault((validity, uid), set()).add(header.split(b":", 1)[-1].strip())


def _write_side(gateway: tuple[str, int], side: str, count: int, seen: Observed
                ) -> list[str]:
    """Append `count` messages and flag the first one seen; returns the answers' types."""
    answers = []
    with _login(gateway) as imap:
        for _ in range(count):
            typ, _ = _append(imap, side)
            answers.append(typ)
            _observe(imap, seen)
        imap.select("INBOX")
        typ, _ = imap.store("1", "+FLAGS", f"($side-{side})")
        answers.append(typ)
        _observe(imap, seen)
        imap.logout()
    return answers


def replica(node_dir: Path) -> dict[str, object]:
    """Per mailbox of the user: UIDVALIDITY, HIGHESTMODSEQ, rows (UID, GUID, flags, MODSEQ)."""
    conn = sqlite3.connect(f"file:{node_dir / 'mailmux.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, object] = {}
        boxes = conn.execute("SELECT id, name, uidvalidity, highestmodseq FROM mailboxes "
                             "WHERE owner = ? ORDER BY name", (USER,)).fetchall()
        for box_id, name, validity, highest in boxes:
            rows = conn.execute("SELECT uid, guid, flags, modseq FROM messages "
                                "WHERE mailbox_id = ? ORDER BY uid", (box_id,)).fetchall()
            out[name] = (validity, highest, [
                (uid, guid, " ".join(sorted(flags.split())), modseq)
                for uid, guid, flags, modseq in rows])
        return out
    finally:
        conn.close()


def _logins(pool: Cluster) -> dict[str, int]:
    """Logins of the user each node has served so far (from its log)."""
    return {i: node.log().count(f"{USER} logged in") for i, node in pool.nodes.items()}


def _identical(pool: Cluster) -> bool:
    states = [replica(pool.nodes[i].data_dir) for i in sorted(pool.nodes)]
    return all(s == states[0] for s in states[1:])


def _run(tmp_path: Path, normal: int) -> None:
    seen: Observed = {}
    with cluster(tmp_path, [USER], proxied=True, normal=normal) as pool:
        # Messages both sides can flag, made on a directly: no gateway has asked about the
        # user before the split, so none holds an answer naming a node it must not see.
        with _login(pool.nodes["a"].imap) as imap:
            assert [_append(imap, "before")[0] for _ in range(2)] == ["OK", "OK"]
            _observe(imap, seen)
        wait_until(lambda: _identical(pool), "identical replicas before the split")
        pool.split({"a", "b"})
        pool.hide(0, {"c"})
        pool.hide(1, {"a", "b"})
        logins = _logins(pool)
        majority = _write_side(pool.gateways[0].imap, "major", 4, seen)
        assert _logins(pool)["c"] == logins["c"], "gateway 0 sent a session to c"
        logins = _logins(pool)
        minority = _write_side(pool.gateways[1].imap, "minor", 3, seen)
        assert {i: n for i, n in _logins(pool).items() if i != "c"} == {
            i: n for i, n in logins.items() if i != "c"}, "gateway 1 sent a session to a or b"
        pool.heal()
        for gateway in pool.gateways:  # the healed view, through both gateways
            with _login(gateway.imap) as imap:
                _observe(imap, seen)
        wait_until(lambda: _identical(pool), "identical replicas after the heal", 90.0)
        for gateway in pool.gateways:
            with _login(gateway.imap) as imap:
                _observe(imap, seen)
        states = {i: replica(pool.nodes[i].data_dir) for i in sorted(pool.nodes)}
    twice = {key: ids for key, ids in seen.items() if len(ids) > 1}
    assert twice == {}, f"a UID named two messages: {twice}"
    assert majority == ["OK"] * 5, majority
    assert states["a"] == states["b"] == states["c"]
    # The minority refused every change (and so nothing it accepted could surprise anyone).
    assert minority == ["NO"] * 4, minority


@pytest.mark.timeout(400)
def test_partition_heals_to_identical_replicas_and_the_minority_refuses(tmp_path: Path
                                                                        ) -> None:
    _run(tmp_path, normal=2)


@pytest.mark.timeout(400)
def test_partition_with_single_copies_heals_and_the_minority_refuses(tmp_path: Path) -> None:
    _run(tmp_path, normal=1)
