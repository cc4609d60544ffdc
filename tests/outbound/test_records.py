"""Replicas of the outbound queue converge: the same change records applied in any order that
keeps each origin's own order (what replication guarantees) give identical rows."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailmux.backend.store.schema import prepare
from mailmux.outbound import records

Record = tuple[str, str, dict[str, Any]]  # origin, kind, payload
R1, R2 = "x@remote.test", "y@other.test"
BODY = b"hi"
BODY_HASH = hashlib.sha256(BODY).hexdigest()


def _attempt(owner: str, epoch: int, attempts: int, results: dict[str, str],
             next_attempt: float) -> dict[str, Any]:
    return {"id": "m", "owner": owner, "epoch": epoch, "attempts": attempts,
            "next_attempt": next_attempt, "lease_until": next_attempt + 10,
            "recipients": {r: {"state": s, "code": 250 if s == "sent" else 451, "text": s}
                           for r, s in results.items()},
            "last_error": "", "warned": 0}


# A delivers to nobody and defers; it dies; b and c both take over at epoch 2 (c wins); b
# records a stale attempt before it learns; c delivers and finishes.
SCENARIO: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "a": [
        ("outbound.enqueue", {"id": "m", "sender": "alice@example.test",
                              "recipients": [R1, R2], "body": BODY_HASH,
                              "size": 2, "created": 1.0, "next_attempt": 1.0, "owner": "a",
                              "epoch": 1, "lease_until": 11.0}),
        ("outbound.claim", {"id": "m", "owner": "a", "epoch": 1, "lease_until": 15.0}),
        ("outbound.attempt", _attempt("a", 1, 1, {R1: "pending", R2: "pending"}, 300.0)),
    ],
    "b": [
        ("outbound.claim", {"id": "m", "owner": "b", "epoch": 2, "lease_until": 320.0}),
        ("outbound.attempt", _attempt("b", 2, 2, {R1: "sent", R2: "pending"}, 900.0)),
    ],
    "c": [
        ("outbound.claim", {"id": "m", "owner": "c", "epoch": 2, "lease_until": 321.0}),
        ("outbound.attempt", _attempt("c", 2, 2, {R1: "sent", R2: "sent"}, 321.0)),
        ("outbound.done", {"id": "m", "reason": "delivered"}),
    ],
}


@st.composite
def interleavings(draw: st.DrawFn, cut: int) -> list[Record]:
    """One arrival order: each origin's records in order, origins interleaved at random;
    the last `cut` records of origin c may be missing (still in flight)."""
    queues = {o: list(rs) for o, rs in SCENARIO.items()}
    queues["c"] = queues["c"][: len(queues["c"]) - cut]
    out: list[Record] = []
    while any(queues.values()):
        origin = draw(st.sampled_from(sorted(o for o, q in queues.items() if q)))
        kind, payload = queues[origin].pop(0)
        out.append((origin, kind, payload))
    return out


def _replica(order: list[Record]) -> list[Any]:
    conn = sqlite3.connect(":memory:")
    prepare(conn)
    for _origin, kind, payload in order:
        records.apply(conn, kind, payload, {BODY_HASH: BODY})
    rows = conn.execute("SELECT * FROM outbound_queue").fetchall()
    held = conn.execute("SELECT hash FROM bodies").fetchall()
    rows.append(tuple(held))
    conn.close()
    return rows


@settings(max_examples=200, deadline=None)
@given(interleavings(cut=0), interleavings(cut=0))
def test_any_arrival_order_gives_identical_rows(one: list[Record], two: list[Record]) -> None:
    row, held = _replica(one)
    assert _replica(two) == [row, held]
    assert row[0] == "m" and row[-4] == "done"
    assert held == ()  # a finished message keeps no body


@settings(max_examples=200, deadline=None)
@given(interleavings(cut=1), interleavings(cut=1))
def test_before_the_end_replicas_agree_on_owner_and_recipients(
    one: list[Record], two: list[Record],
) -> None:
    # Without c's final record: still identical, and c owns it with both recipients sent.
    row, held = _replica(one)
    assert _replica(two) == [row, held]
    columns = ["id", "sender", "recipients", "body_hash", "size", "created", "next_attempt",
               "attempts", "owner", "epoch", "lease_until", "state", "warned", "last_error",
               "done_reason"]
    named = dict(zip(columns, row, strict=True))
    assert (named["owner"], named["epoch"], named["state"]) == ("c", 2, "queued")
    assert '"sent"' in named["recipients"] and '"pending"' not in named["recipients"]
    assert named["body_hash"] == BODY_HASH and held == ((BODY_HASH,),)
    assert named["sender"] == "alice@example.test"
