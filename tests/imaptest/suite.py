"""The imaptest suite's state shared by conftest.py and test_scripted.py: where the binary is,
which scripted tests exist, and their outcomes per target (computed once, in parallel)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.imaptest.runner import Outcome, find_binary, run_one, scripted_tests
from tests.imaptest.targets import PASSWORD, gateway_pool, single_node, users_for

TARGETS = ("node", "gateway")
PARALLEL = 4
TABLE: dict[str, dict[str, str]] = {}
REPO = Path(__file__).resolve().parents[2]
EXPECTED_FILE = Path(__file__).with_name("expected_pass.txt")
BUILD_SCRIPT = REPO.parent / "shared" / "imaptest" / "build.sh"
INSTALL = ("imaptest not found: set MAILMUX_IMAPTEST to its binary, or build it into .imaptest/ "
           "with ../shared/imaptest/build.sh \"$PWD/.imaptest\" (needs apt-get install dovecot-dev "
           "autoconf automake libtool pkg-config make gcc)")


def _locate() -> tuple[Path | None, str]:
    binary = find_binary(REPO)
    if binary is not None or not BUILD_SCRIPT.is_file():
        return binary, INSTALL
    # The archive is beside the repository but not built yet: build it once, as .ci/run does.
    built = subprocess.run(["bash", str(BUILD_SCRIPT), str(REPO / ".imaptest")],
                           capture_output=True, text=True, timeout=900, check=False)
    if built.returncode != 0:
        return None, f"{INSTALL}\nbuild.sh said:\n{built.stderr}"
    return find_binary(REPO), INSTALL


BINARY, WHY_MISSING = _locate()
NAMES = scripted_tests(BINARY) if BINARY is not None else []


class Suite:
    """Outcomes of every scripted test against one target, computed on first use."""

    def __init__(self, binary: Path, names: list[str], root: Path) -> None:
        self.binary, self.names, self.root = binary, names, root
        self.outcomes: dict[str, dict[str, Outcome]] = {}

    def outcome(self, target: str, name: str) -> Outcome:
        if target not in self.outcomes:
            self.outcomes[target] = self._run(target)
            TABLE[target] = {n: o.status for n, o in self.outcomes[target].items()}
        return self.outcomes[target][name]

    def _run(self, target: str) -> dict[str, Outcome]:
        users = [u for n in self.names for u in users_for(n)]
        start = single_node if target == "node" else gateway_pool
        root = self.root / target
        root.mkdir()
        with start(root, users) as (host, port), ThreadPoolExecutor(PARALLEL) as pool:
            futures = {n: pool.submit(run_one, self.binary, n, host, port, *users_for(n), PASSWORD)
                       for n in self.names}
            return {n: f.result() for n, f in futures.items()}
