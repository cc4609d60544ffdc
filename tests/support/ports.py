"""Free loopback ports for configs that must name a peer's port before the peer starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    # The OS picks; the tiny window before the node binds it is acceptable in tests.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
