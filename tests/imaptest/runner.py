"""Run Dovecot's imaptest scripted tests and classify their outcome (no pytest here).

imaptest (built by ../shared/imaptest/build.sh) runs one scripted test per process. Its stdout
ends with a summary ("1 test groups: F failed, ..." and "base protocol: F/N individual commands
failed"); the expected/actual lines of a failure go to stderr. A test that ran no command was
skipped: this imaptest version checks the `capabilities:` header itself and silently runs nothing
when the server lacks one.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PASS, FAIL, SKIP = "pass", "fail", "skip"
TEST_TIMEOUT = 90.0

_GROUPS = re.compile(r"^(\d+) test groups: (\d+) failed", re.M)
_COMMANDS = re.compile(r"^(base protocol|extensions): (\d+)/(\d+) individual commands failed", re.M)


@dataclass(frozen=True)
class Outcome:
    status: str
    output: str


def find_binary(repo_root: Path) -> Path | None:
    """MAILMUX_IMAPTEST, else `.imaptest/` in the repository root (where .ci/run builds it)."""
    env = os.environ.get("MAILMUX_IMAPTEST")
    candidates = [Path(env)] if env else []
    candidates.append(repo_root / ".imaptest" / "imaptest" / "src" / "imaptest")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def scripted_tests(binary: Path) -> list[str]:
    """Names of the scripted tests beside the binary (`src/tests/NAME`; `*.mbox` are data)."""
    directory = binary.parent / "tests"
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_file() and "." not in p.name)


def classify(returncode: int, stdout: str) -> str:
    groups = _GROUPS.search(stdout)
    counts = _COMMANDS.findall(stdout)
    if groups is None or len(counts) != 2:
        return FAIL  # crashed, or timed out before its summary
    failed = int(groups.group(2)) + sum(int(c[1]) for c in counts)
    ran = sum(int(c[2]) for c in counts)
    if returncode != 0 or failed:
        return FAIL
    return PASS if ran else SKIP


def run_one(binary: Path, name: str, host: str, port: int, user: str, user2: str,
            password: str) -> Outcome:
    args = [str(binary), f"host={host}", f"port={port}", f"user={user}", f"user2={user2}",
            f"pass={password}", f"test={binary.parent / 'tests' / name}"]
    env = {**os.environ, "LD_LIBRARY_PATH": "/usr/lib/dovecot"}
    try:
        done = subprocess.run(args, capture_output=True, text=True, errors="replace", env=env,
                              timeout=TEST_TIMEOUT, check=False, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        return Outcome(FAIL, f"imaptest timed out after {TEST_TIMEOUT}s\n{out}")
    output = done.stderr + done.stdout
    return Outcome(classify(done.returncode, done.stdout), output)


def load_expected(path: Path) -> dict[str, set[str]]:
    """`TARGET TEST` per line; `#` starts a comment."""
    expected: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            target, name = line.split()
            expected.setdefault(target, set()).add(name)
    return expected
