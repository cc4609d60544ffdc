"""How imaptest's own output is read (no imaptest needed)."""

from __future__ import annotations

from pathlib import Path

from tests.imaptest.runner import FAIL, PASS, SKIP, classify, load_expected


def _summary(groups_failed: int, base: tuple[int, int], ext: tuple[int, int]) -> str:
    return (f"1 test groups: {groups_failed} failed, 0 skipped due to missing capabilities\n"
            f"base protocol: {base[0]}/{base[1]} individual commands failed\n"
            f"extensions: {ext[0]}/{ext[1]} individual commands failed\n")


def test_commands_ran_and_none_failed_is_a_pass() -> None:
    assert classify(0, _summary(0, (0, 17), (0, 0))) == PASS


def test_no_command_ran_is_a_skip() -> None:
    assert classify(0, _summary(0, (0, 0), (0, 0))) == SKIP


def test_a_failed_group_or_command_is_a_failure() -> None:
    # "atoms" against a server that drops the connection: the group fails with 1/0 commands.
    assert classify(2, _summary(1, (1, 0), (0, 0))) == FAIL
    assert classify(0, _summary(0, (0, 4), (1, 3))) == FAIL


def test_no_summary_is_a_failure() -> None:
    assert classify(0, "Fatal: Unknown arg: pass2=pw\n") == FAIL
    assert classify(-11, "") == FAIL


def test_expected_list_format(tmp_path: Path) -> None:
    listing = tmp_path / "expected.txt"
    listing.write_text("# comment\nnode fetch\n\ngateway fetch  # why\nnode list\n")
    assert load_expected(listing) == {"node": {"fetch", "list"}, "gateway": {"fetch"}}
