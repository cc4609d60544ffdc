from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import imapclient
import pytest

from tests.support.nodes import NodeProcess

ALICE = ("alice@example.test", "alice-pw")
BOB = ("bob@example.test", "bob-pw")


def connect(node: NodeProcess, user: tuple[str, str] | None = ALICE) -> imapclient.IMAPClient:
    client = imapclient.IMAPClient(node.imap[0], port=node.imap[1], ssl=False, timeout=20)
    if user is not None:
        client.login(*user)
    return client


@pytest.fixture
def alice(node: NodeProcess) -> Iterator[imapclient.IMAPClient]:
    client = connect(node)
    yield client
    client.shutdown()


@pytest.fixture
def quick_node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    """A node with tiny limits, for the limit tests (login_timeout long enough that a loaded
    machine does not time a test's own connections out)."""
    n = node_factory(
        "q",
        extra=(
            'login_timeout = "4s"\nmax_unauthenticated = 3\nmax_failed_logins = 2\n'
            'failed_login_delay = "10ms"\nmax_line_length = 2048\nmax_message_size = 100000'
        ),
    )
    n.add_user(*ALICE)
    n.start()
    return n


def raw_session(node: NodeProcess, *commands: bytes, user: tuple[str, str] | None = ALICE) -> bytes:
    """Send raw command lines (after logging in) and return everything up to the last tag."""
    with socket.create_connection(node.imap, timeout=20) as sock:
        reader = sock.makefile("rb")
        out = [reader.readline()]
        lines = ([f'L LOGIN "{user[0]}" "{user[1]}"\r\n'.encode()] if user else []) + list(
            commands)
        for line in lines:
            sock.sendall(line)
            tag = line.split(b" ", 1)[0]
            while True:
                response = reader.readline()
                if not response:
                    return b"".join(out)
                out.append(response)
                if response.startswith((tag + b" ", b"* BYE", b"* BAD")):
                    break
        return b"".join(out)
