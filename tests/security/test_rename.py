"""Finding 13: RENAME touches exactly the mailbox and its children, and clashes are NO."""

from __future__ import annotations

from collections.abc import Callable

from tests.security.support import Raw, served
from tests.support.nodes import NodeProcess


def _names(raw: Raw) -> set[str]:
    lines = raw.command(b"l", b'LIST "" "*"')
    return {line.rsplit(b" ", 1)[1].strip().strip(b'"').decode() for line in lines
            if line.startswith(b"* LIST")}


def test_rename_does_not_reach_lookalike_mailboxes(victim: Callable[..., NodeProcess]) -> None:
    node = victim()
    with Raw(node.imap) as alice:
        alice.login()
        for name in (b"Re233_1", b"Re233X1/keep", b"re233_1/child2", b"Re233_1/own"):
            assert alice.command(b"c", b"CREATE " + name)[-1].startswith(b"c OK")
        assert alice.command(b"r", b"RENAME Re233_1 Re233new")[-1].startswith(b"r OK")
        names = _names(alice)
        assert {"Re233new", "Re233new/own", "Re233X1/keep", "re233_1/child2"} <= names
        assert "Re233_1" not in names and "Re233X1" in names


def test_rename_into_an_existing_hierarchy_is_refused(
    victim: Callable[..., NodeProcess],
) -> None:
    node = victim()
    with Raw(node.imap) as alice:
        alice.login()
        for name in (b"A", b"A/x", b"B/x"):
            assert alice.command(b"c", b"CREATE " + name)[-1].startswith(b"c OK")
        reply = alice.command(b"r", b"RENAME A B")
        assert reply[-1].startswith(b"r NO [ALREADYEXISTS]"), reply
        assert alice.command(b"n", b"NOOP")[-1].startswith(b"n OK")  # still connected
        assert {"A", "A/x", "B/x"} <= _names(alice)
    assert "Traceback" not in node.log()
    served(node.imap)
