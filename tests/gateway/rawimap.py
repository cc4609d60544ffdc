"""A raw-socket IMAP client for failover tests: what the gateway sends is seen byte for byte."""

from __future__ import annotations

import re
import socket
import struct
import time

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class RawImap:
    def __init__(self, address: tuple[str, int], timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""
        self.greeting = self.response()

    def close(self) -> None:
        self.sock.close()  # idempotent: tests close early, the fixture closes again

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0), as a crashing client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(1024 * 1024)
        if not data:
            raise ConnectionError("the gateway closed the connection")
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def response(self) -> bytes:
        """One whole response, literals included."""
        parts = []
        while True:
            line = self._line()
            parts.append(line)
            match = _LITERAL.search(line)
            if match is None:
                return b"".join(parts)
            parts.append(self._exactly(int(match.group(1))))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, tag: str, text: bytes | str) -> list[bytes]:
        """Send `tag text` and return every response up to and including the tagged one."""
        if isinstance(text, str):
            text = text.encode()
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.until(tag)

    def until(self, tag: str) -> list[bytes]:
        out = []
        while True:
            response = self.response()
            out.append(response)
            if response.startswith(tag.encode() + b" "):
                return out

    def login(self, user: str, password: str) -> None:
        assert self.command("l", f"LOGIN {user} {password}")[-1].startswith(b"l OK")


def wait_until(check: object, what: str, deadline: float = 30.0) -> None:
    assert callable(check)
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling with a deadline
