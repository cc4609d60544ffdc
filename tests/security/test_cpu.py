"""Finding 1 and 14: one command must not freeze a node (LIST patterns, UID FETCH ranges)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.security.support import Raw, served
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.timeout(120)


def test_backtracking_list_pattern_does_not_freeze_the_node(
    victim: Callable[..., NodeProcess],
) -> None:
    node = victim()
    name = "zq" + "a" * 40
    with Raw(node.imap) as attacker:
        attacker.login()
        assert attacker.command(b"c1", f"CREATE {name}".encode())[-1].startswith(b"c1 OK")
        # With a backtracking regex this pattern costs minutes of CPU on the event loop.
        attacker.send(b'a1 LIST "" "zq%%%%%%%%%%%%%%%%%%%b"\r\n')
        served(node.imap)
        reply = attacker.until_tag(b"a1")
        assert reply[-1].startswith(b"a1 OK"), reply
        assert not any(name.encode() in line for line in reply)  # "b" is not in the name
        ok = attacker.command(b"a2", f'LIST "" "zq%a%a*{name[-3:]}"'.encode())
        assert any(name.encode() in line for line in ok) and ok[-1].startswith(b"a2 OK")


def test_work_beyond_the_budget_gets_no_limit(victim: Callable[..., NodeProcess]) -> None:
    node = victim('command_cpu_budget = "5ms"')
    with Raw(node.imap) as attacker:
        attacker.login()
        for i in range(150):
            attacker.send(b"c%d CREATE %s\r\n" % (i, b"deep/" + b"a" * 100 + b"%d" % i))
        for i in range(150):
            attacker.until_tag(b"c%d" % i)
        pattern = b"*a" * 400
        reply = attacker.command(b"a1", b'LIST "" "' + pattern + b'"')
        assert reply[-1].startswith(b"a1 NO [LIMIT]"), reply[-1]
        assert attacker.command(b"a2", b"NOOP")[-1].startswith(b"a2 OK")
    served(node.imap)


def test_uid_fetch_with_thousands_of_ranges_is_cheap(victim: Callable[..., NodeProcess]) -> None:
    node = victim("max_line_length = 1048576")
    with Raw(node.imap) as attacker:
        attacker.login()
        messages = [b"Subject: x%d\r\n\r\nhi\r\n" % i for i in range(3000)]
        batch = b"".join(b"p%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(m), m)
                         for i, m in enumerate(messages))
        attacker.send(batch)
        for i in range(3000):
            assert attacker.until_tag(b"p%d" % i)[-1].startswith(b"p%d OK" % i)
        assert attacker.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        # Ranges that name no message, then one that names them all: checking each message
        # against each range costs 3000 x 50000 steps.
        ranges = b",".join(b"%d:%d" % (i, i + 1) for i in range(10**6, 10**6 + 3 * 50_000, 3))
        ranges += b",1:*"
        started = time.monotonic()
        attacker.send(b"f1 UID FETCH " + ranges + b" (FLAGS)\r\n")
        served(node.imap)
        reply = attacker.until_tag(b"f1")
        assert reply[-1].startswith(b"f1 OK"), reply[-1]
        assert len(reply) == 3001
        took = time.monotonic() - started
        print(f"UID FETCH with 50000 ranges over 3000 messages: {took:.2f}s")
