"""Hands each imaptest pytest item its outcome; prints the pass/fail/skip table at the end."""

from __future__ import annotations

import pytest

from tests.imaptest.runner import load_expected
from tests.imaptest.suite import BINARY, EXPECTED_FILE, NAMES, TABLE, Suite


@pytest.fixture(scope="session")
def imaptest_suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    assert BINARY is not None
    return Suite(BINARY, NAMES, tmp_path_factory.mktemp("imaptest"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TABLE:
        return
    terminalreporter.section("imaptest scripted suite")
    terminalreporter.write_line("| target | pass | fail | skip |")
    terminalreporter.write_line("|---|---|---|---|")
    for target, statuses in TABLE.items():
        counts = [sum(1 for s in statuses.values() if s == k) for k in ("pass", "fail", "skip")]
        terminalreporter.write_line(f"| {target} | {counts[0]} | {counts[1]} | {counts[2]} |")
    for target, statuses in TABLE.items():
        failed = sorted(n for n, s in statuses.items() if s == "fail")
        terminalreporter.write_line(f"{target} failing: {' '.join(failed) or '-'}")
    expected = load_expected(EXPECTED_FILE)
    for target, statuses in TABLE.items():
        new = sorted(n for n, s in statuses.items()
                     if s == "pass" and n not in expected.get(target, set()))
        if new:
            terminalreporter.write_line(
                f"{target} passing but not in expected_pass.txt: {' '.join(new)}")
