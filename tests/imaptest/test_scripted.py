"""Dovecot's imaptest scripted suite against a node and a gateway (tests/imaptest/README.md).

A test listed in expected_pass.txt for a target must pass there; an unlisted one is an xfail, so
one that starts passing shows up as XPASS and can be added to the list.
"""

from __future__ import annotations

import pytest

from tests.imaptest.runner import PASS, SKIP, load_expected
from tests.imaptest.suite import EXPECTED_FILE, NAMES, TARGETS, WHY_MISSING, Suite

EXPECTED = load_expected(EXPECTED_FILE)


def _params() -> list[object]:
    if not NAMES:
        return [pytest.param("node", "-", marks=pytest.mark.skip(reason=WHY_MISSING))]
    params: list[object] = []
    for target in TARGETS:
        for name in NAMES:
            marks = [] if name in EXPECTED.get(target, set()) else [
                pytest.mark.xfail(reason="not in expected_pass.txt", strict=False)]
            params.append(pytest.param(target, name, marks=marks, id=f"{target}-{name}"))
    return params


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("target", "name"), _params())
def test_scripted(imaptest_suite: Suite, target: str, name: str) -> None:
    outcome = imaptest_suite.outcome(target, name)
    if outcome.status == SKIP and name not in EXPECTED.get(target, set()):
        pytest.skip("imaptest ran no command: a capability it needs is not offered")
    assert outcome.status == PASS, (
        f"imaptest {name} on {target}: {outcome.status}\n{outcome.output}")


def test_expected_names_exist() -> None:
    """A typo in expected_pass.txt would silently never run."""
    if not NAMES:
        pytest.skip(WHY_MISSING)
    for target, names in EXPECTED.items():
        assert target in TARGETS, target
        assert names <= set(NAMES), names - set(NAMES)
