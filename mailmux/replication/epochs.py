"""The home lease epochs an acceptor granted, on disk: one small append-only file per node.

Why not the node's database: a grant must be durable before it leaves, and the database's
writer may be busy committing a 20 MB message; a lease round waiting behind it times out and
the next round needs yet another epoch written. This file takes a few bytes and one fsync per
new term, in a thread of its own, so lease latency does not follow the mail load.

Format: one JSON line per grant of a new (epoch, holder). The highest epoch per user wins on
reading, so a torn last line (a crash mid-write) costs nothing: its grant was never sent. The
file is compacted (rewritten with one line per user) at every start.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailmux.privatefiles import PRIVATE_FILE

FILE_NAME = "lease-epochs"


class EpochFile:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease-epochs")
        self._fd: int | None = None

    def load(self) -> dict[str, tuple[int, str]]:
        """Every user's highest saved (epoch, holder); compacts the file (call at start)."""
        terms: dict[str, tuple[int, str]] = {}
        if self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    saved = json.loads(line)
                    user, epoch, holder = str(saved["u"]), int(saved["e"]), str(saved["h"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: that grant was never sent
                if epoch > terms.get(user, (0, ""))[0]:
                    terms[user] = (epoch, holder)
        fresh = self.path.with_suffix(".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        try:
            os.write(fd, "".join(_line(u, e, h) for u, (e, h) in terms.items()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, self.path)
        _fsync_dir(self.path.parent)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return terms

    async def save(self, user: str, epoch: int, holder: str) -> None:
        """Durable (fsync'd) when this returns."""
        await asyncio.get_running_loop().run_in_executor(
            self._pool, self._append, _line(user, epoch, holder).encode())

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            raise OSError("the lease epoch file is not open")
        os.write(self._fd, data)
        os.fsync(self._fd)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line(user: str, epoch: int, holder: str) -> str:
    return json.dumps({"u": user, "e": epoch, "h": holder}) + "\n"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
