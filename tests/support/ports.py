"""Free loopback ports for configs that must name a peer's port before the peer starts.

A port is reserved only by the config that names it, so until the node binds it anyone may
take it. The kernel hands out ports from the ephemeral range to every `bind(port 0)` and every
outgoing connection, and in a suite full of both that window was seen to lose ("address
already in use"). So the port is picked at random *below* the ephemeral range, where only an
explicit choice like this one can land, and checked free by binding it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FLOOR = 10000  # above the well-known and most registered service ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    low = _ephemeral_low()
    if low - _FLOOR >= 1000:
        for _ in range(100):
            port = random.randrange(_FLOOR, low)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # no room below the ephemeral range: let the OS pick
        chosen: int = sock.getsockname()[1]
        return chosen
