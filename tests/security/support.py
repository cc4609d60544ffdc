"""What the attack tests share: a normal client that must still be served, and RSS readings."""

from __future__ import annotations

import contextlib
import imaplib
import socket
import time
from pathlib import Path

ALICE = ("alice@example.test", "alice-pw")
BOB = ("bob@example.test", "bob-pw")
SERVED_WITHIN = 15.0  # generous: the machine is shared; a frozen loop takes far longer


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def served(address: tuple[str, int], user: tuple[str, str] = BOB,
           within: float = SERVED_WITHIN) -> float:
    """A normal client logs in, selects INBOX and logs out; returns how long it took."""
    started = time.monotonic()
    imap = imaplib.IMAP4(*address, timeout=within)
    try:
        imap.login(*user)
        assert imap.select("INBOX")[0] == "OK"
        assert imap.noop()[0] == "OK"
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()
    elapsed = time.monotonic() - started
    assert elapsed < within, f"normal client took {elapsed:.1f}s"
    return elapsed


class Raw:
    """A raw IMAP connection for sending what no client library would."""

    def __init__(self, address: tuple[str, int], timeout: float = 30.0,
                 greet: bool = True) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.reader = self.sock.makefile("rb")
        # greet=False: speak first, as a gateway proving its link does
        self.greeting = self.reader.readline() if greet else b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.reader.readline()

    def until_tag(self, tag: bytes, limit: int = 100_000) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(limit):
            line = self.reader.readline()
            if not line:
                break
            out.append(line)
            if line.startswith(tag + b" ") or line.startswith(b"* BYE"):
                break
        return out

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tag(tag)

    def login(self, user: tuple[str, str] = ALICE) -> None:
        reply = self.command(b"L", f'LOGIN "{user[0]}" "{user[1]}"'.encode())
        assert reply[-1].startswith(b"L OK"), reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
