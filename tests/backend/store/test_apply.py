"""The store's remote-apply path converges whatever order the same changes arrive in."""

from __future__ import annotations

import asyncio
import hashlib
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailmux.backend.store.interface import ChangeRecord
from mailmux.backend.store.sqlite import SqliteStore

ALICE = "alice@example.test"
BODY = b"Subject: x\r\n\r\nbody\r\n"


def _base() -> list[ChangeRecord]:
    """A user, her INBOX and one message, as a peer "o" would ship them."""
    digest = hashlib.sha256(BODY).hexdigest()
    return [
        ChangeRecord("o", 1, 1 << 16, "user.add", {"user": ALICE, "hash": "$argon2id$x"}),
        ChangeRecord("o", 2, 2 << 16, "mailbox.create", {
            "owner": ALICE, "name": "INBOX", "uidvalidity": 7, "special_use": None}),
        ChangeRecord("o", 3, 3 << 16, "message.add", {
            "owner": ALICE, "mailbox": "INBOX", "uidvalidity": 7, "uid": 1, "uidnext": 2,
            "guid": "g1", "flags": [], "internaldate": "2026-11-24T00:00:00+00:00",
            "body": digest, "size": len(BODY)}),
    ]


flag_changes = st.lists(
    st.tuples(st.sampled_from(["p", "q"]), st.integers(4, 40),
              st.sampled_from(["\\Seen", "\\Flagged", "$A"]), st.booleans()),
    max_size=10, unique_by=lambda c: (c[0], c[1]),
)


def _records(changes: list[tuple[str, int, str, bool]], expunge_at: int | None
             ) -> list[ChangeRecord]:
    out = []
    for seq, (origin, hlc, flag, present) in enumerate(changes, start=1):
        out.append(ChangeRecord(origin, seq, hlc << 16, "message.flags", {
            "owner": ALICE, "mailbox": "INBOX", "uid": 1, "guid": "g1",
            "added": [flag] if present else [], "removed": [] if present else [flag],
            "user": None}))
    if expunge_at is not None:
        out.append(ChangeRecord("r", 1, expunge_at << 16, "message.expunge", {
            "owner": ALICE, "mailbox": "INBOX", "uid": 1, "guid": "g1"}))
    return out


async def _final(directory: Path, name: str, records: list[ChangeRecord]) -> object:
    async with SqliteStore.open(directory / f"{name}.sqlite3", name, ("example.test",)) as s:
        base = _base()
        await s.apply_remote(base, {str(base[2].payload["body"]): BODY})
        for record in records:  # one at a time: every interleaving is a possible arrival order
            await s.apply_remote([record], {})
        box = await s.get_mailbox(ALICE, "INBOX")
        return sorted((m.uid, sorted(m.flags)) for m in await s.messages(ALICE, box.id))


@settings(max_examples=25, deadline=None)
@given(flag_changes, st.one_of(st.none(), st.integers(4, 40)), st.randoms())
def test_any_arrival_order_converges(changes: list[tuple[str, int, str, bool]],
                                     expunge_at: int | None, rnd: random.Random) -> None:
    records = _records(changes, expunge_at)
    shuffled = list(records)
    rnd.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as tmp:
        first = asyncio.run(_final(Path(tmp), "n1", records))
        second = asyncio.run(_final(Path(tmp), "n2", shuffled))
    assert first == second
    if expunge_at is not None:
        assert first == []  # the expunge wins, whenever it arrives
