"""The acceptor's epoch file: what was saved comes back after a restart, the highest epoch per
user wins, and a torn last line (a crash mid-write: that grant was never sent) is skipped."""

from __future__ import annotations

import stat
from pathlib import Path

from mailmux.replication.epochs import FILE_NAME, EpochFile


async def test_saved_epochs_come_back_highest_first_and_a_torn_line_is_skipped(
    tmp_path: Path,
) -> None:
    first = EpochFile(tmp_path)
    assert first.load() == {}
    await first.save("alice@example.test", 1, "a")
    await first.save("alice@example.test", 3, "b")
    await first.save("bob@example.test", 2, "c")
    await first.save("alice@example.test", 2, "a")  # late and lower: never wins
    first.close()
    with (tmp_path / FILE_NAME).open("a") as f:
        f.write('{"u": "alice@example.test", "e": 9')  # the crash came mid-line
    second = EpochFile(tmp_path)
    loaded = second.load()
    assert loaded == {"alice@example.test": (3, "b"), "bob@example.test": (2, "c")}
    second.close()
    # Compacted at start: one line per user, readable by the owner alone.
    path = tmp_path / FILE_NAME
    assert len(path.read_text().splitlines()) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    third = EpochFile(tmp_path)
    assert third.load() == loaded
    third.close()
