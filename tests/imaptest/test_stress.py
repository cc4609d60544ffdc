"""imaptest's stress mode with state checking (`checkpoint=`) against one node, briefly.

Five clients append, fetch, store, expunge and check each other's view for STRESS_SECONDS;
imaptest reports every protocol or state error it sees as an `Error:` line, and there must be
none. This imaptest version can end a checkpoint run with its own assertion
(`client_update_plan: assertion failed (plan_size == 0)`, also against Dovecot): that panic and
its backtrace are not the server's errors and are left out.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.imaptest.suite import BINARY, WHY_MISSING
from tests.imaptest.targets import PASSWORD, single_node

STRESS_SECONDS = 20
USER = "stress@example.test"


def server_errors(output: str) -> list[str]:
    errors = []
    for line in output.splitlines():
        if line.startswith("Panic:") and "client_update_plan" in line:
            break  # imaptest's own end-of-run assertion; what follows is its backtrace
        if line.startswith("Error:") or line.startswith("Panic:"):
            errors.append(line)
    return errors


def test_server_errors_skip_imaptests_own_assertion() -> None:
    out = ("Error: u[1]: Keyword used without being in FLAGS: $x\n"
           "Panic: file client-state.c: line 222 (client_update_plan): assertion failed\n"
           "Error: Raw backtrace: #0 ...\n")
    assert server_errors(out) == ["Error: u[1]: Keyword used without being in FLAGS: $x"]


@pytest.mark.timeout(STRESS_SECONDS + 240)
def test_stress_with_checkpoints_has_no_errors(tmp_path: Path) -> None:
    if BINARY is None:
        pytest.skip(WHY_MISSING)
    mbox = BINARY.parent / "tests" / "default.mbox"
    with single_node(tmp_path, [USER]) as (host, port):
        done = subprocess.run(
            [str(BINARY), f"host={host}", f"port={port}", f"user={USER}", f"pass={PASSWORD}",
             f"mbox={mbox}", "clients=5", f"secs={STRESS_SECONDS}", "checkpoint=5"],
            capture_output=True, text=True, errors="replace", timeout=STRESS_SECONDS + 180,
            env={**os.environ, "LD_LIBRARY_PATH": "/usr/lib/dovecot"}, check=False,
            start_new_session=True)
    output = done.stderr + done.stdout
    # (imaptest's own assertion may cut the run short of its "Totals:" summary)
    assert server_errors(output) == [], output[-3000:]
