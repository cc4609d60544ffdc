"""Boards are subscribed for every user by default, so subscription-only clients show them."""

from __future__ import annotations

import imaplib
from collections.abc import Callable

from tests.support.nodes import NodeProcess


def _subscribed(node: NodeProcess, user: str, password: str) -> tuple[list[bytes], list[bytes]]:
    client = imaplib.IMAP4(*node.imap, timeout=30)
    try:
        client.login(user, password)
        lsub = client.lsub('""', "*")[1]
        # RFC 5258 LIST-EXTENDED, as Thunderbird asks when the server offers it.
        status, listed = client._simple_command("LIST", "(SUBSCRIBED)", '""', "*")
        assert status == "OK"
        listed = client._untagged_response(status, listed, "LIST")[1]
    finally:
        client.logout()
    return [x for x in lsub if x], [x for x in listed if x]


def test_a_new_board_is_subscribed_for_existing_and_later_users(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node = node_factory("a")
    node.add_user("alice@example.test", "alice-pw")
    assert node.cli("board", "add", "news").returncode == 0
    node.add_user("bob@example.test", "bob-pw")  # after the board
    node.start()
    for user, password in (("alice@example.test", "alice-pw"), ("bob@example.test", "bob-pw")):
        lsub, listed = _subscribed(node, user, password)
        assert any(line.endswith(b'"Boards/news"') or line.endswith(b" Boards/news")
                   for line in lsub), lsub
        news = [line for line in listed if b"Boards/news" in line]
        assert news and b"\\Subscribed" in news[0], listed


def test_boards_autosubscribe_false_leaves_boards_unsubscribed(
    node_factory: Callable[..., NodeProcess],
) -> None:
    node = node_factory("a", extra="boards_autosubscribe = false")
    node.add_user("alice@example.test", "alice-pw")
    assert node.cli("board", "add", "news").returncode == 0
    node.start()
    lsub, listed = _subscribed(node, "alice@example.test", "alice-pw")
    assert not any(b"Boards/news" in line for line in lsub + listed)
    assert any(b"INBOX" in line for line in lsub)  # the user's own folders still are
