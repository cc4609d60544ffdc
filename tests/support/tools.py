"""External programs the tests drive, and the Debian package each comes from.

A test that needs one calls `require_tool(name)`: when the program is missing the test is skipped
with the exact `apt-get install` line that provides it (under CI=1 it fails instead: `.ci/run`
must have installed it).
"""

from __future__ import annotations

import os
import shutil

import pytest

DEBIAN_PACKAGES = {
    "mbsync": "isync",
    "swaks": "swaks",
    "openssl": "openssl",
    "postfix": "postfix",
    "doveadm": "dovecot-core",
}


def missing_reason(tool: str) -> str:
    package = DEBIAN_PACKAGES.get(tool, tool)
    return f"{tool} not installed: apt-get install --no-install-recommends {package}"


def require_tool(tool: str) -> str:
    """The path of `tool`, or skip (fail under CI) naming the Debian package to install."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing_reason(tool)} (.ci/run must install it)")
        pytest.skip(missing_reason(tool))
    return path


def skip_unless_tool(tool: str) -> pytest.MarkDecorator:
    """The same as a mark: `@skip_unless_tool("swaks")`."""
    return pytest.mark.skipif(shutil.which(tool) is None, reason=missing_reason(tool))
