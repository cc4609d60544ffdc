"""Files and directories only the service's user may read: data dirs, pool secrets, configs
that hold a secret. Creating them private from the first byte, and refusing to run when an
administrator's copy is open to group or others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class NotPrivateError(Exception):
    """A data dir or secret file can be read by users other than its owner."""


def write_private(path: Path, text: str) -> None:
    """Create or replace `path` readable by its owner alone (0600), never briefly wider."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), PRIVATE_FILE)
        f.write(text)


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700, or tighten an existing one to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    path.chmod(PRIVATE_DIR)


def open_to_others(path: Path) -> int | None:
    """The permission bits of `path` if group or others have any access to it, else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def require_private(path: Path, what: str) -> None:
    """Refuse `path` if group or others can access it; the message says how to fix it."""
    mode = open_to_others(path)
    if mode is not None:
        fix = "700" if path.is_dir() else "600"
        raise NotPrivateError(
            f"{what} {path} is accessible by group or others (mode {mode:04o}); "
            f"run: chmod {fix} {path}"
        )
