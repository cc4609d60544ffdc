"""The test setup itself: warnings policy, skip messages, the scripts README names."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest

from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]


def test_third_party_deprecation_is_shown_not_fatal() -> None:
    # What click 8.5 did to get_text_stream: a dependency's new deprecation must not fail tests.
    # catch_warnings keeps the configured filters; record=True only keeps the summary quiet.
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(
            "'thing' is deprecated", DeprecationWarning, "somedep/__init__.py", 1,
            module="somedep",
        )
    assert [str(w.message) for w in caught] == ["'thing' is deprecated"]


def test_mailmux_own_warning_is_an_error() -> None:
    with pytest.raises(UserWarning):
        warnings.warn_explicit(
            "mailmux warns", UserWarning, "mailmux/x.py", 1, module="mailmux.x"
        )


def test_missing_interop_tool_skip_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tools.shutil, "which", lambda _: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        tools.require_tool("mbsync")
    assert "apt-get install --no-install-recommends isync" in str(info.value)


def test_readme_commands_exist_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install . && mailmux-gateway demo" in readme
    assert "bash scripts/test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test" in ci
    for script in (ROOT / "scripts" / "test", ROOT / "scripts" / "check", ROOT / ".ci" / "run"):
        assert os.access(script, os.X_OK), script
        subprocess.run(["bash", "-n", str(script)], check=True)
